"""The lineage tags of a run hold no credentials; they come back from params when re-read."""

from __future__ import annotations

from tasks.data import DataVersion, lineage_tags, repo_from_lineage
from tests.helpers import small_params

REPO = "https://ci-bot:ghp_s3cr3tT0ken@git.example.com/team/data.git"


def test_the_data_repo_tag_is_stored_redacted_and_resolved_from_params(tmp_path):
    tags = lineage_tags(DataVersion(REPO, "data/batch.parquet", "a" * 40, "b" * 32))
    assert "s3cr3t" not in tags["ct.data_repo"] and "ci-bot" not in tags["ct.data_repo"]
    assert tags["ct.data_repo"] == "https://***@git.example.com/team/data.git"
    params = small_params(tmp_path, data={"repo": REPO})
    assert repo_from_lineage(tags["ct.data_repo"], params) == REPO


def test_a_repo_params_no_longer_name_is_opened_without_credentials(tmp_path):
    tags = lineage_tags(DataVersion(REPO, "data/batch.parquet", "a" * 40, "b" * 32))
    params = small_params(tmp_path, data={"repo": "https://ci-bot:x@git.example.com/other.git"})
    assert repo_from_lineage(tags["ct.data_repo"], params) == (
        "https://git.example.com/team/data.git"
    )


def test_a_repo_without_credentials_is_kept_as_it_was(tmp_path):
    params = small_params(tmp_path)
    assert repo_from_lineage("/srv/data-repo", params) == "/srv/data-repo"

"""Data versions on real git + DVC repositories in temporary folders (no servers)."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.config import TrainingWindow
from tasks.data import (
    DataError,
    MissingColumnsError,
    MissingDataError,
    init_data_repo,
    lineage_tags,
    make_batch,
    publish_batch,
    pull_version,
    read_batch,
    read_version,
    resolve_version,
)
from tests.helpers import small_params

DAY = 86_400
T0 = 1_780_000_000  # commit times are set explicitly so the day window is deterministic


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def data_repo(tmp_path_factory):
    """Five versions of data/batch.parquet, one a day apart, and a decoy raw/batch.parquet."""
    root = tmp_path_factory.mktemp("versions")
    repo, remote = root / "repo", root / "remote"
    init_data_repo(repo, remote)
    revs, frames = [], []
    mp = pytest.MonkeyPatch()
    for day in range(5):
        stamp = f"@{T0 + day * DAY} +0000"
        mp.setenv("GIT_COMMITTER_DATE", stamp)
        mp.setenv("GIT_AUTHOR_DATE", stamp)
        frames.append(make_batch(day, 300 + day))
        revs.append(publish_batch(repo, frames[-1], "data/batch.parquet", f"day {day}"))
    publish_batch(repo, make_batch(9, 50), "raw/batch.parquet", "a decoy with the same name")
    mp.undo()
    return repo, remote, revs, frames


def md5_of(repo: Path, rev: str) -> str:
    meta = yaml.safe_load(git(repo, "show", f"{rev}:data/batch.parquet.dvc"))
    return meta["outs"][0]["md5"]


# -- 15: the exact path, not the file name --------------------------------------------------


def _lock_repo(tmp_path: Path, outs: dict[str, str]) -> Path:
    repo = tmp_path / "lock-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    stages = {
        f"stage{i}": {"cmd": "true", "outs": [{"path": p, "hash": "md5", "md5": m, "size": 1}]}
        for i, (p, m) in enumerate(outs.items())
    }
    (repo / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    git(repo, "add", "dvc.lock")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "lock")
    return repo


def test_lock_lookup_matches_the_exact_path_not_the_file_name(tmp_path):
    repo = _lock_repo(tmp_path, {"raw/batch.parquet": "a" * 32, "./data/batch.parquet": "b" * 32})
    assert resolve_version(str(repo), "data/batch.parquet", "HEAD").md5 == "b" * 32
    assert resolve_version(str(repo), "raw/batch.parquet", "HEAD").md5 == "a" * 32


def test_a_same_named_file_elsewhere_is_not_taken_for_the_data(tmp_path):
    repo = _lock_repo(tmp_path, {"raw/batch.parquet": "a" * 32})
    with pytest.raises(DataError, match="not tracked by DVC"):
        resolve_version(str(repo), "data/batch.parquet", "HEAD")


# -- 14: a repository URL goes through DVC's API ---------------------------------------------


def test_a_repository_url_is_resolved_and_pulled_through_dvc(data_repo, tmp_path):
    repo, _remote, revs, frames = data_repo
    url = repo.as_uri()  # file:///...: a URL git -C cannot use; DVC clones it
    version = resolve_version(url, "data/batch.parquet", revs[2])
    assert (version.repo, version.rev, version.md5) == (url, revs[2], md5_of(repo, revs[2]))
    assert resolve_version(url, "data/batch.parquet", "main~1").rev == revs[-1]

    cache = tmp_path / "dvc-cache"
    pulled = pull_version(version, small_params(tmp_path / "p", project={"state_dir": str(cache)}))
    assert pulled.local_path is not None
    assert pulled.local_path.is_relative_to(cache / "dvc-cache")  # DVC's cache, as configured
    pd.testing.assert_frame_equal(read_batch(pulled.local_path), frames[2])


def test_a_bare_clone_url_works_and_an_unknown_url_is_named(data_repo, tmp_path):
    repo, _remote, revs, _frames = data_repo
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    version = resolve_version(bare.as_uri(), "data/batch.parquet", "main")
    assert version.md5 == md5_of(repo, revs[-1])
    with pytest.raises(DataError, match="nowhere"):
        resolve_version((tmp_path / "nowhere").as_uri(), "data/batch.parquet", "main")


# -- 16: no data version yet -----------------------------------------------------------------


def test_a_version_no_one_produced_says_how_to_produce_it(tmp_path):
    repo = tmp_path / "fresh"
    init_data_repo(repo, tmp_path / "empty-remote")
    (repo / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "prepare": {
                        "cmd": "python -m tasks.data data/batch.parquet",
                        "outs": [{"path": "data/batch.parquet", "md5": "c" * 32, "size": 9}],
                    }
                },
            }
        )
    )
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "prepare": {
                        "cmd": "python -m tasks.data data/batch.parquet",
                        "outs": ["data/batch.parquet"],
                    }
                }
            }
        )
    )
    git(repo, "add", "dvc.lock", "dvc.yaml")
    git(repo, "commit", "-q", "-m", "lock from another machine")
    version = resolve_version(str(repo), "data/batch.parquet", "HEAD")
    with pytest.raises(MissingDataError) as err:
        pull_version(version)
    message = str(err.value)
    assert "no data yet" in message
    assert "dvc repro prepare" in message
    assert str((tmp_path / "empty-remote").resolve()) in message


# -- 19: training window ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "days_used"),
    [
        (TrainingWindow(), [4]),
        (TrainingWindow(versions=3), [4, 3, 2]),
        (TrainingWindow(versions=50), [4, 3, 2, 1, 0]),
        (TrainingWindow(days=2.5), [4, 3, 2]),
        (TrainingWindow(versions=2, days=10), [4, 3]),
    ],
)
def test_the_window_reads_each_version_at_its_own_revision(data_repo, tmp_path, window, days_used):
    repo, _remote, revs, frames = data_repo
    version = resolve_version(str(repo), "data/batch.parquet", revs[4], window)
    assert [v.rev for v in version.window] == [revs[d] for d in days_used]
    assert [v.md5 for v in version.window] == [md5_of(repo, revs[d]) for d in days_used]
    rows = read_version(pull_version(version))
    expected = pd.concat([frames[d] for d in reversed(days_used)], ignore_index=True)
    pd.testing.assert_frame_equal(rows, expected)
    assert [m.window for m in version.members()] == [(m,) for m in version.members()]
    assert [m.md5 for m in version.members()] == [v.md5 for v in version.window]
    used = json.loads(lineage_tags(version)["ct.data_versions"])
    assert used == [{"rev": revs[d], "md5": md5_of(repo, revs[d])} for d in days_used]


def test_the_window_of_an_older_revision_stops_there(data_repo):
    repo, _remote, revs, _frames = data_repo
    version = resolve_version(str(repo), "data/batch.parquet", revs[1], TrainingWindow(versions=9))
    assert [v.rev for v in version.window] == [revs[1], revs[0]]


def test_the_window_through_a_url_lists_the_same_versions(data_repo):
    repo, _remote, revs, _frames = data_repo
    local = resolve_version(str(repo), "data/batch.parquet", "main", TrainingWindow(versions=3))
    remote = resolve_version(
        repo.as_uri(), "data/batch.parquet", "main", TrainingWindow(versions=3)
    )
    assert [(v.rev, v.md5) for v in remote.window] == [(v.rev, v.md5) for v in local.window]
    # main is the decoy's commit, which still holds day 4's version of data/batch.parquet
    assert [v.md5 for v in remote.window] == [md5_of(repo, revs[d]) for d in (4, 3, 2)]
    assert [v.rev for v in remote.window[1:]] == [revs[3], revs[2]]


# -- 18: configured columns the data lacks ---------------------------------------------------


def test_a_configured_column_the_data_lacks_is_named_at_pull(data_repo, tmp_path):
    repo, _remote, revs, _frames = data_repo
    params = small_params(tmp_path, data={"id_column": "id", "sensitive_column": "sex"})
    version = resolve_version(str(repo), "data/batch.parquet", revs[0])
    with pytest.raises(MissingColumnsError) as err:
        pull_version(version, params)
    message = str(err.value)
    assert "data.id_column = 'id'" in message
    assert "data.sensitive_column = 'sex'" in message
    assert "customer_id" in message  # what the data does have
    assert err.value.missing == {"data.id_column": "id", "data.sensitive_column": "sex"}

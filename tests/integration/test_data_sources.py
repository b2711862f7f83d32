"""The data a user points the flow at (issue 9, items 14, 17, 18, 19), end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from tasks.data import MissingColumnsError, make_batch
from tests.helpers import store


def set_data(ws, **values) -> None:
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["data"].update(values)
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_url_repository_with_a_window_trains_on_every_version_and_lists_them(workspace):
    ws = workspace
    # the last two versions share most customer ids: each version is validated on its own
    revs = [ws.land(make_batch(2, 1_500, seed=seed), f"day 2, take {seed}") for seed in (0, 1, 2)]
    set_data(ws, window={"versions": 2, "days": None}, id_column=None)
    url = ws.data_repo.as_uri()
    from flows.continuous_training import continuous_training

    outcome = continuous_training(rev="main", repo=url, params_file=str(ws.params_file))
    assert outcome.kind == "promoted", outcome.line()
    tags = store(ws.params).get_run(outcome.run_id).data.tags
    assert tags["ct.data_repo"] == url
    assert tags["ct.data_rev"] == revs[2]
    used = json.loads(tags["ct.data_versions"])
    assert [u["rev"] for u in used] == [revs[2], revs[1]]
    assert used[0]["md5"] == outcome.data_md5
    run = store(ws.params).get_run(outcome.run_id)
    assert 2_000 < int(run.data.params["train_rows"]) < 3_000  # 80% of 2 x 1,500 rows
    assert (ws.params.state_dir / "dvc-cache").is_dir()  # fetched by DVC into its cache


def test_a_placeholder_column_is_named_at_pull_not_a_keyerror_in_training(workspace):
    ws = workspace
    rev = ws.land_day(1, 2_000)
    set_data(ws, id_column="id")
    with pytest.raises(MissingColumnsError, match=r"data\.id_column = 'id'"):
        ws.run(rev)
    text = json.dumps(ws.slack.messages[-1])
    assert "failed at pull" in ws.slack.texts()[-1]
    assert "data.id_column" in text and "KeyError" not in text

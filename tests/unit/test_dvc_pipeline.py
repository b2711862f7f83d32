"""dvc.yaml and dvc.lock agree with params.yaml, so a fresh clone can reproduce the data
(issue 9, item 16: a stale lock listed a param that no longer exists)."""

import hashlib
import io

import pytest
import yaml

from tasks.config import load_params
from tasks.data import make_batch
from tests.helpers import ROOT

PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def lookup(key: str):
    value = PARAMS
    for part in key.split("."):
        assert isinstance(value, dict) and part in value, f"{key} is not in params.yaml"
        value = value[part]
    return value


def test_the_lock_has_exactly_the_pipelines_stages_and_commands():
    assert set(LOCK) == set(PIPELINE)
    for name, stage in PIPELINE.items():
        assert " ".join(LOCK[name]["cmd"].split()) == stage["cmd"], name


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_the_lock_records_the_params_each_stage_reads_as_they_are_now(stage):
    listed = PIPELINE[stage].get("params", [])
    recorded = LOCK[stage].get("params", {}).get("params.yaml", {})
    assert set(recorded) == set(listed), "run `dvc repro` (or `dvc commit`) and commit dvc.lock"
    for key in listed:
        assert recorded[key] == lookup(key), f"dvc.lock is stale for {key}: run `dvc repro`"


def test_a_fresh_clone_reproduces_the_locked_data_version():
    prep = load_params(ROOT / "params.yaml").prepare
    buffer = io.BytesIO()
    make_batch(prep.day, prep.rows, prep.seed, prep.drift).to_parquet(buffer, index=False)
    (out,) = LOCK["prepare"]["outs"]
    assert out["path"] == "data/batch.parquet"
    assert hashlib.md5(buffer.getvalue()).hexdigest() == out["md5"]

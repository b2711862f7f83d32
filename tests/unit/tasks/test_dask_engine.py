"""train.engine: dask on a real distributed.LocalCluster (two worker processes on loopback)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tasks.dask_engine import (
    DaskEngineError,
    check_parts,
    dask_client,
    dask_run,
    holdout_on_dask,
    train_on_dask,
    train_parts,
    validate_parts,
)
from tasks.data import DataError, corrupt_batch, make_batch, split_holdout
from tasks.data_versions import DataVersion
from tasks.estimators import train_model
from tasks.evaluate import compare
from tasks.reports import EvaluationError
from tests.helpers import ROOT, small_params

# Holdout ROC AUC of the Dask engine vs the local engine on the same data (stated in the README).
ENGINE_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return small_params(tmp_path_factory.mktemp("dask"), dask={"workers": 2})


@pytest.fixture(scope="module")
def client(params) -> Iterator:
    """One LocalCluster of two worker processes for the module, shared as a run shares it
    (``dask_run``); workers import the project."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), previous) if p)
    try:
        with dask_run(), dask_client(params) as c:
            yield c
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def write_parts(folder: Path, frames: list[pd.DataFrame]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"part-{i:05d}.parquet"
        frame.to_parquet(path, index=False)
        paths.append(path)
    return paths


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def version_of(folder: Path) -> DataVersion:
    return DataVersion(".", "data/parts", "0" * 40, "f" * 32 + ".dir", local_path=folder)


@pytest.mark.parametrize(
    "breakage, named",
    [
        ("schema", "another schema"),
        ("empty", "is empty"),
        ("unreadable", "unreadable"),
    ],
)
def test_a_bad_part_is_named_before_any_training(tmp_path, params, breakage, named):
    frames = [make_batch(day, 300) for day in (1, 2, 3)]
    if breakage == "schema":
        frames[1] = frames[1].assign(tenure_months=frames[1]["tenure_months"].astype(str))
    elif breakage == "empty":
        frames[1] = frames[1].iloc[:0]
    parts = write_parts(tmp_path / "parts", frames)
    if breakage == "unreadable":
        parts[1].write_bytes(parts[1].read_bytes()[:200])  # truncated, as an interrupted copy
    with pytest.raises(DataError) as err:
        check_parts(parts, params)
    assert "part-00001.parquet" in str(err.value) and named in str(err.value)
    if breakage == "schema":
        assert "tenure_months" in str(err.value)
    # before any training: even with a scheduler that cannot answer, the part is the error
    unreachable = params.model_copy(
        update={"dask": params.dask.model_copy(update={"scheduler": "tcp://127.0.0.1:1"})}
    )
    with pytest.raises(DataError, match=r"part-00001\.parquet"):
        train_on_dask(version_of(tmp_path / "parts"), unreachable)


def test_a_scheduler_that_does_not_answer_is_named_within_the_timeout(params):
    address = f"tcp://127.0.0.1:{closed_port()}"
    settings = params.dask.model_copy(update={"scheduler": address, "connect_timeout_seconds": 2})
    silent = params.model_copy(update={"dask": settings})
    started = time.monotonic()
    with pytest.raises(DaskEngineError) as err, dask_client(silent):
        pass
    assert address in str(err.value) and "did not answer within 2 s" in str(err.value)
    assert time.monotonic() - started < 2 + 15  # the timeout, plus the client's own teardown


def test_validation_across_parts_names_the_bad_part(tmp_path, client, params):
    frames = [make_batch(day, 1_000) for day in (1, 2, 3)]
    frames[2] = corrupt_batch(frames[2])
    result = validate_parts(client, write_parts(tmp_path / "parts", frames), params)
    assert not result.success
    per_part = [f for f in result.failures if f.detail.startswith("part ")]
    assert per_part and all("part-00002.parquet" in f.detail for f in per_part)
    assert {f.column for f in per_part} >= {"monthly_charges", "tenure_months", "contract"}


def test_a_clean_partitioned_batch_passes(tmp_path, client, params):
    frames = [make_batch(day, 1_000) for day in (1, 2)]
    result = validate_parts(client, write_parts(tmp_path / "parts", frames), params)
    assert result.success, result.summary()
    assert result.evaluated > 50


def test_an_id_repeated_in_two_parts_is_caught_across_parts(tmp_path, client, params):
    first, second = make_batch(1, 1_000), make_batch(2, 1_000)
    second.loc[5, "customer_id"] = first.loc[7, "customer_id"]  # each part alone is unique
    result = validate_parts(client, write_parts(tmp_path / "parts", [first, second]), params)
    assert not result.success
    assert [(f.expectation, f.column) for f in result.failures] == [
        ("expect_column_values_to_be_unique", "customer_id")
    ]
    assert "1 values repeat across parts" in result.failures[0].detail


def test_dask_and_local_engines_agree_on_the_holdout(tmp_path, client, params):
    frames = [make_batch(day, 4_000) for day in (1, 2, 3)]
    parts = write_parts(tmp_path / "parts", frames)
    whole = pd.concat(frames, ignore_index=True)
    train, holdout = split_holdout(whole, params.data)

    on_dask = train_parts(client, parts, params)
    local = train_model(train, params)

    assert on_dask.train_rows == len(train)
    assert type(on_dask.pipeline[-1]).__name__ == "LGBMClassifier"  # the plain model, not Dask's
    X, y = holdout[params.data.features], holdout[params.data.label]
    dask_auc = roc_auc_score(y, on_dask.pipeline.predict_proba(X)[:, 1])
    local_auc = roc_auc_score(y, local.predict_proba(X)[:, 1])
    assert dask_auc > 0.7 and local_auc > 0.7
    assert abs(dask_auc - local_auc) < ENGINE_TOLERANCE, (dask_auc, local_auc)


class Broken:
    """A champion that cannot score these rows."""

    def predict_proba(self, X):
        raise ValueError("feature_names mismatch")


def test_the_workers_score_the_holdout_as_the_flow_process_would(tmp_path, client, params):
    frames = [make_batch(day, 2_000) for day in (1, 2, 3)]
    parts = write_parts(tmp_path / "parts", frames)
    model = train_parts(client, parts, params).pipeline
    _, expected = split_holdout(pd.concat(frames, ignore_index=True), params.data)
    with holdout_on_dask(version_of(tmp_path / "parts"), params) as held:
        assert held.client is client  # the run's cluster, not one of its own
        assert len(held.frame) == len(expected)
        assert set(held.frame["customer_id"]) == set(expected["customer_id"])
        scores = held.score(model, "candidate")
        local = model.predict_proba(held.frame[params.data.features])[:, 1]
        assert scores == pytest.approx(local, abs=1e-9)  # row for row, in the frame's order
        with pytest.raises(EvaluationError, match="the champion cannot score"):
            held.score(Broken(), "champion")


def test_gates_decide_the_same_on_worker_scores(tmp_path, client, params):
    frames = [make_batch(day, 2_000) for day in (1, 2, 3)]
    parts = write_parts(tmp_path / "parts", frames)
    model = train_parts(client, parts, params).pipeline
    weak_params = small_params(
        tmp_path / "weak",
        data={"categorical_features": ["payment_method", "region"]},
        dask={"workers": 2},
    )
    weak = train_parts(client, parts, weak_params).pipeline
    untimed = small_params(tmp_path / "g", gates={"latency": {"enabled": False}})
    decisions = []
    with holdout_on_dask(version_of(tmp_path / "parts"), params) as held:
        for candidate, champion in ((model, weak), (weak, model)):
            args = (candidate, champion, held.frame, untimed.gates, params.data)
            on_workers = compare(*args, scorer=held.score)
            here = compare(*args)
            assert [(g.name, g.status) for g in on_workers.gates] == [
                (g.name, g.status) for g in here.gates
            ]
            assert on_workers.candidate_metrics == pytest.approx(here.candidate_metrics)
            assert on_workers.decision == here.decision
            decisions.append(on_workers.gate("no_regression").status)
    assert decisions == ["passed", "failed"]  # the scenarios differ: the check can fail

"""train.engine: dask through the continuous-training flow, on real LocalClusters (two workers)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tasks.dask_engine import DaskEngineError
from tasks.data import make_batch, publish_batch
from tasks.data_versions import MissingDataError
from tests.helpers import ROOT, store, write_params
from tests.integration.test_continuous_training import champion_version

PARTS = "data/parts"


@pytest.fixture
def dask_ws(workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The workspace with a directory data version and train.engine: dask on 2 local workers."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    write_params(
        workspace.params_file.parent,
        data={"repo": str(workspace.data_repo), "path": PARTS},
        train={"engine": "dask"},
        dask={"workers": 2},
    )
    yield workspace


def land_parts(ws, days=(1, 2, 3), rows: int = 1_500) -> str:
    return publish_batch(ws.data_repo, [make_batch(d, rows) for d in days], PARTS, "parts")


def test_a_partitioned_version_validates_trains_on_dask_and_is_promoted(dask_ws, caplog):
    ws = dask_ws
    with caplog.at_level(logging.INFO, logger="tasks"):
        outcome = ws.run(land_parts(ws))
    started = [r for r in caplog.records if "starting a local Dask cluster" in r.getMessage()]
    assert len(started) == 1  # validation, training and scoring share the run's cluster
    assert any("holdout of" in r.getMessage() for r in caplog.records)  # scored on workers
    assert outcome.kind == "promoted", outcome.line()
    assert outcome.data_md5.endswith(".dir")
    assert champion_version(ws) == outcome.version == "1"
    run = store(ws.params).get_run(outcome.run_id)
    assert run.data.params["engine"] == "dask"
    assert run.data.tags["ct.data_md5"] == outcome.data_md5
    assert 3_000 < int(run.data.params["train_rows"]) < 4_500  # the training split of 3 parts
    assert run.data.metrics["holdout_roc_auc"] > 0.7
    assert ws.slack.texts()[0].startswith(":rocket:")


def _drop_object(root: Path, md5: str) -> None:
    (root / "files" / "md5" / md5[:2] / md5[2:]).unlink()


def test_a_part_missing_from_the_remote_fails_at_pull_naming_it(dask_ws):
    ws = dask_ws
    rev = land_parts(ws, days=(1, 2))
    dir_md5 = next(
        line.split()[-1]
        for line in (ws.data_repo / f"{PARTS}.dvc").read_text().splitlines()
        if "md5:" in line
    )
    cache = ws.data_repo / ".dvc" / "cache"
    manifest = cache / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    lost = next(e for e in json.loads(manifest.read_text()) if e["relpath"] == "part-00001.parquet")
    _drop_object(cache, lost["md5"])
    _drop_object(ws.remote, lost["md5"])
    with pytest.raises(MissingDataError) as err:
        ws.run(rev)
    assert "part-00001.parquet" in str(err.value) and "part-00000" not in str(err.value)
    assert champion_version(ws) is None


def _kill_a_training_worker(cluster, pids: dict[str, int], killed: list[int]) -> None:
    """Once LightGBM's training tasks run, SIGKILL the worker process running one of them."""
    stop = threading.Event()
    while not stop.wait(0.05):
        for task in list(cluster.scheduler.tasks.values()):
            if "_train_part" in str(task.key) and task.processing_on is not None:
                pid = pids[task.processing_on.address]
                psutil.Process(pid).kill()
                killed.append(pid)
                return


def test_a_worker_killed_during_training_fails_the_run_and_promotes_nothing(dask_ws):
    from distributed import Client, LocalCluster

    ws = dask_ws
    first = ws.run(land_parts(ws))
    assert first.kind == "promoted" and champion_version(ws) == "1"

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        write_params(
            ws.params_file.parent,
            data={"repo": str(ws.data_repo), "path": PARTS},
            train={"engine": "dask", "hyperparameters": {"n_estimators": 5_000, "verbose": -1}},
            dask={"scheduler": cluster.scheduler_address},
        )
        killed: list[int] = []
        killer = threading.Thread(
            target=_kill_a_training_worker, args=(cluster, pids, killed), daemon=True
        )
        killer.start()
        with pytest.raises(DaskEngineError) as err:
            ws.run(land_parts(ws, days=(4, 5, 6)))
        killer.join(timeout=5)
    assert killed, "no LightGBM training task was seen running on the cluster"
    message = str(err.value)
    assert "left the cluster during LightGBM training" in message
    assert any(address in message for address in pids), message
    assert champion_version(ws) == "1"
    assert ws.slack.texts()[-1].startswith(":rotating_light:")

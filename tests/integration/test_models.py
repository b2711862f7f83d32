"""Two models served side by side from one `deployments.serve` process: their own deployments,
their own champions, driven by the `ctflows` command and by a routed data-landed webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from deployments.server import free_port
from tasks.data import make_batch, publish_batch
from tests.helpers import ROOT, STOP_SECONDS, served_deployment, store
from tests.integration.test_cli import as_json, ctflows


def declare(project: Path, name: str, data_path: str) -> None:
    folder = project / "models.d" / name
    folder.mkdir(parents=True)
    overlay = {
        "extends": "../../params.yaml",
        "data": {"path": data_path},
        "registry": {"model_name": name},
        "deploy": {"deployment": f"{name}-model"},
        # both train at once on a shared machine: a timing gate would measure the neighbour
        "gates": {"latency": {"enabled": False}},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))


def champion(ws, name: str) -> str | None:
    """The champion's version; None only when there is none. A store still busy with a run
    that was stopped with the served process (SQLite locked) is asked again, briefly."""
    from mlflow.exceptions import MlflowException

    client = store(ws.params)
    deadline = time.monotonic() + 30
    while True:
        try:
            return str(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or time.monotonic() > deadline:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
            time.sleep(0.5)


SECRET = "two-models-secret"


def served(project: Path, log: Path, webhook_port: int) -> subprocess.Popen[bytes]:
    """`deployments.serve` on the project, once its deployments exist on the server."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CTFLOWS_WEBHOOK_SECRET": SECRET}
    args = ["--params", str(project / "params.yaml"), "--webhook-port", str(webhook_port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while served_deployment("promote/upsell") is None:
        assert proc.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"never served: {log.read_text()[-2000:]}"
        time.sleep(0.5)
    return proc


def post_landed(port: int, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    from deployments.webhook import sign

    raw = json.dumps(body).encode()
    ts = str(int(time.time()))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/data-landed",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "X-Ctflows-Timestamp": ts,
            "X-Ctflows-Signature": sign(SECRET, ts, raw),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_models_keep_their_own_deployments_and_champions(workspace):
    from prefect.client.orchestration import get_client

    ws = workspace
    project = ws.params_file.parent
    declare(project, "churn", "data/batch.parquet")
    declare(project, "upsell", "data/upsell.parquet")
    rev_churn = ws.land_day(1, 3_000)
    rev_upsell = publish_batch(
        ws.data_repo, make_batch(2, 4_000, seed=5), "data/upsell.parquet", "upsell day 1"
    )

    listed = as_json(ctflows(ws, "models", "--json"))
    assert [m["name"] for m in listed] == ["churn", "upsell"]

    port = free_port()
    proc = served(project, ws.root / "serve.log", port)
    try:
        with get_client(sync_client=True) as client:
            for model in ("churn", "upsell"):
                for name in (
                    f"continuous-training/{model}-scheduled",
                    f"continuous-training/{model}-on-new-data",
                    f"continuous-training/{model}-manual",
                    f"rollback/{model}",
                    f"promote/{model}",
                ):
                    assert client.read_deployment_by_name(name).name == name.split("/")[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CTFLOWS_ACTOR": "test"}
        runs = {
            model: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ctflows",
                    "run",
                    model,
                    "--rev",
                    rev,
                    "--json",
                    "--project",
                    str(project),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for model, rev in (("churn", rev_churn), ("upsell", rev_upsell))
        }
        results = {}
        for model, run in runs.items():
            out, err = run.communicate(timeout=600)
            assert run.returncode == 0, err
            results[model] = json.loads(out)
        # the webhook routes by the data path it names, or by an explicit model
        routed = post_landed(port, {"path": "data/upsell.parquet", "rev": rev_upsell})
        assert routed[0] == 202, routed
        assert routed[1]["deployment"] == "continuous-training/upsell-on-new-data"
        named = post_landed(
            port, {"path": "data/batch.parquet", "rev": rev_churn, "model": "churn"}
        )
        assert named[1]["deployment"] == "continuous-training/churn-on-new-data"
        unknown = post_landed(port, {"path": "data/other.parquet", "rev": rev_churn})
        assert unknown[0] == 422 and "no model trains on" in unknown[1]["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=STOP_SECONDS)
    for model in ("churn", "upsell"):
        assert results[model]["state"] == "COMPLETED"
        assert results[model]["decision"]["kind"] == "promoted"
        assert results[model]["decision"]["model_name"] == model
        assert champion(ws, model) == "1"
    md5s = {results[m]["decision"]["data_md5"] for m in ("churn", "upsell")}
    assert len(md5s) == 2  # each trained on its own data
    everything = as_json(ctflows(ws, "status", "--json"))
    assert {s["model"]: s["champion"]["version"] for s in everything} == {
        "churn": "1",
        "upsell": "1",
    }

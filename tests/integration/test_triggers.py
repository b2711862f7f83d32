"""Retraining started by a signed webhook on served deployments, exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from deployments.build import render
from deployments.server import free_port
from deployments.webhook import sign
from tests.helpers import ROOT, STOP_SECONDS, wait_for

SECRET = "test-secret-not-for-production"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def signed(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(ts if ts is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Ctflows-Timestamp": stamp,
        "X-Ctflows-Signature": sign(secret, stamp, body),
    }


SINCE: dict[str, float] = {"t": 0.0}  # runs of earlier tests on the shared server are ignored


def flow_runs_of(deployment_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except Exception:
            return None
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return [r for r in runs if r.created and r.created.timestamp() >= SINCE["t"]]


HOST = "127.0.0.2"  # not the default: `--host` must reach the receiver


@pytest.fixture
def served(workspace, prefect_api, tmp_path):
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PYTHONPATH": str(ROOT),
        "CTFLOWS_WEBHOOK_SECRET": SECRET,
        "CTFLOWS_SLACK_WEBHOOK_URL": workspace.slack.url,
    }
    port = free_port()
    SINCE["t"] = time.time()
    logs = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployments.serve",
            "--params",
            str(workspace.params_file),
            "--webhook-port",
            str(port),
            "--host",
            HOST,
        ],
        cwd=ROOT,
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "serving " in (tmp_path / "serve.log").read_text(), 120, "serving")
        wait_for(lambda: _health(port), 30, "the webhook receiver")
        assert not _health(port, "127.0.0.1"), "the receiver must bind only to --host"
        yield f"http://{HOST}:{port}/hooks/data-landed"
    finally:
        serve.terminate()
        serve.wait(timeout=STOP_SECONDS)
        logs.close()


def _health(port: int, host: str = HOST) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_signed_webhook_starts_exactly_one_run_and_bad_requests_none(workspace, served):
    ws = workspace
    rev = ws.land_day(1, 3_000)
    from tasks.data import resolve_version

    md5 = resolve_version(str(ws.data_repo), "data/batch.parquet", rev).md5
    body = json.dumps({"path": "data/batch.parquet", "rev": rev, "md5": md5}).encode()
    bad = [
        (b"{}", {"Content-Type": "application/json"}, 401),  # unsigned
        (body, signed(body, secret="wrong"), 401),  # wrong secret
        (body, signed(body, ts=int(time.time()) - 600), 401),  # stale
        (b"x" * (1_048_576 + 1), signed(b"x" * (1_048_576 + 1)), 413),  # oversized
        (b"{not json", signed(b"{not json"), 400),
        (b'{"path": "data/batch.parquet"}', signed(b'{"path": "data/batch.parquet"}'), 422),
    ]
    for payload, headers, expected in bad:
        status, answer = post(served, payload, headers)
        assert status == expected, (expected, answer)
        assert answer["error"]
    assert flow_runs_of("continuous-training/churn-classifier-on-new-data") == []

    headers = signed(body)
    status, first = post(served, body, headers)
    assert status == 202, first
    assert first["parameters"]["rev"] == rev and first["parameters"]["md5"] == md5
    replay_status, _ = post(served, body, headers)
    assert replay_status == 409
    time.sleep(1.1)  # a second, freshly signed event for the same md5
    status, second = post(served, body, signed(body))
    assert status == 202 and second["flow_run_id"] == first["flow_run_id"]
    assert second["duplicate"] is True

    def finished():
        runs = flow_runs_of("continuous-training/churn-classifier-on-new-data")
        return runs if runs and runs[0].state and runs[0].state.is_final() else None

    runs = wait_for(finished, 180, "the flow run to finish")
    assert len(runs) == 1
    assert runs[0].state.is_completed(), runs[0].state
    assert runs[0].parameters["rev"] == rev and runs[0].parameters["md5"] == md5
    assert any("promoted" in t for t in ws.slack.texts())


def test_committed_prefect_yaml_matches_the_definitions():
    committed = (ROOT / "deployments" / "prefect.yaml").read_text()
    assert committed == render(str(ROOT / "params.yaml"))
    spec = yaml.safe_load(committed)
    names = {(d["entrypoint"].split(":")[1], d["name"]) for d in spec["deployments"]}
    assert names == {
        ("continuous_training", "churn-classifier-scheduled"),
        ("continuous_training", "churn-classifier-on-new-data"),
        ("continuous_training", "churn-classifier-manual"),
        ("drift_monitor", "churn-classifier-daily"),
        ("repair", "churn-classifier"),
        ("rollback", "churn-classifier"),
        ("promote", "churn-classifier"),
        ("production_monitor", "churn-classifier-scheduled"),
    }
    # no repair run every 30 s per model: served, the process watches the journals; with a
    # work pool, a crashed run of the model's journaling deployments starts one
    repair = next(d for d in spec["deployments"] if d["entrypoint"].endswith(":repair"))
    assert repair["schedules"] == []
    (crashed,) = repair["triggers"]
    assert crashed["expect"] == ["prefect.flow-run.Crashed"]
    flows, names = crashed["match_related"]
    assert set(flows["prefect.resource.name"]) == {"continuous-training", "rollback", "promote"}
    assert "churn-classifier-manual" in names["prefect.resource.name"]
    landed = next(d for d in spec["deployments"] if d["name"] == "churn-classifier-on-new-data")
    trigger = landed["triggers"][0]
    assert trigger["expect"] and trigger["match"]["prefect.resource.id"].endswith("batch.parquet")


def test_prefect_deploy_all_accepts_the_project_file(tmp_path):
    """On a Prefect server of its own: the project file's deployments and their automations
    (the data-landed and drift triggers) would otherwise stay on the session's server and
    fire for the other tests' events, with the project's own params."""
    from deployments.server import prefect_server

    with prefect_server(tmp_path / "prefect") as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
        prefect = str(Path(sys.executable).parent / "prefect")
        subprocess.run(
            [prefect, "work-pool", "create", "ctflows", "--type", "process", "--overwrite"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        done = subprocess.run(
            [
                *(prefect, "--no-prompt", "deploy", "--all"),
                *("--prefect-file", "deployments/prefect.yaml"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            name = "continuous-training/churn-classifier-scheduled"
            scheduled = client.read_deployment_by_name(name)
            assert scheduled.work_pool_name == "ctflows"
            assert scheduled.schedules[0].schedule.cron == "0 3 * * 1"
            drift = client.read_deployment_by_name("drift-monitor/churn-classifier-daily")
            assert drift.schedules[0].schedule.timezone == "UTC"


def test_drift_emits_the_event_that_starts_retraining(workspace, served):
    ws = workspace
    first = ws.run(ws.land_day(1, 6_000))
    assert first.kind == "promoted"
    drifted_rev = ws.land_day(2, 6_000, drift=1.5)
    from flows.drift_monitor import drift_monitor

    report = drift_monitor(rev=drifted_rev, params_file=str(ws.params_file))
    assert {"contract", "monthly_charges"} <= {f.feature for f in report.drifted}
    assert any("drift" in t for t in ws.slack.texts())

    def finished():
        runs = flow_runs_of("continuous-training/churn-classifier-on-new-data")
        done = [r for r in runs or [] if r.state and r.state.is_final()]
        return done or None

    runs = wait_for(finished, 180, "the retraining the drift event triggers")
    assert len(runs) == 1 and runs[0].parameters["rev"] == drifted_rev
    assert runs[0].state.is_completed()


def test_a_burst_of_bad_requests_starts_nothing_and_service_goes_on(served):
    import concurrent.futures

    body = b'{"path": "data/batch.parquet", "rev": "HEAD"}'
    bad_headers = signed(body, secret="forged")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(served, body, bad_headers)[0], range(200)))
    assert set(codes) == {401}
    assert _health(int(served.split(":")[2].split("/")[0]))
    assert flow_runs_of("continuous-training/churn-classifier-on-new-data") == []


def _wait_final(run_id: str, timeout: float):
    from prefect.client.orchestration import get_client

    def final():
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id} to end")


def test_a_data_version_whose_run_failed_runs_again_by_hand_and_by_webhook(workspace, served):
    from prefect.deployments import run_deployment

    from tasks.data import resolve_version

    ws = workspace
    # data of its own: the session's Prefect server remembers runs of other tests' data
    rev = ws.land_day(1, 3_000, seed=31)
    md5 = resolve_version(str(ws.data_repo), "data/batch.parquet", rev).md5
    body = json.dumps({"path": "data/batch.parquet", "rev": rev, "md5": md5}).encode()
    good = ws.params_file.read_text()
    ws.params_file.write_text("data: [a passing mistake\n")  # the run fails at its start
    status, first = post(served, body, signed(body))
    assert status == 202, first
    assert _wait_final(first["flow_run_id"], 120).state.is_failed()
    ws.params_file.write_text(good)

    by_hand = run_deployment(
        "continuous-training/churn-classifier-manual",
        parameters={"rev": rev, "md5": md5, "params_file": str(ws.params_file)},
        timeout=240,
    )
    assert by_hand.state.is_completed(), by_hand.state
    assert any("promoted" in t for t in ws.slack.texts())

    time.sleep(1.1)  # a freshly signed delivery of the same data
    status, second = post(served, body, signed(body))
    assert status == 202 and second["duplicate"] is False, second
    assert second["flow_run_id"] != first["flow_run_id"]
    assert _wait_final(second["flow_run_id"], 180).state.is_completed()
    time.sleep(1.1)
    status, third = post(served, body, signed(body))  # it finished: exactly once again
    assert status == 202 and third["flow_run_id"] == second["flow_run_id"], third
    assert third["duplicate"] is True
    runs = flow_runs_of("continuous-training/churn-classifier-on-new-data")
    assert sorted(str(r.id) for r in runs) == sorted([first["flow_run_id"], second["flow_run_id"]])


def test_serve_without_a_webhook_secret_serves_the_rest_and_says_why(
    workspace, prefect_api, tmp_path
):
    from prefect.deployments import run_deployment

    ws = workspace
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PYTHONPATH": str(ROOT),
        "CTFLOWS_SLACK_WEBHOOK_URL": ws.slack.url,
    }
    env.pop("CTFLOWS_WEBHOOK_SECRET", None)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [
                *(sys.executable, "-m", "deployments.serve"),
                *("--params", str(ws.params_file), "--webhook-port", str(port)),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "serving " in log.read_text(), 120, "serving")
        said = log.read_text()
        assert "webhook receiver off: no webhook secret" in said
        assert "CTFLOWS_WEBHOOK_SECRET" in said and "ctflows-webhook-secret" in said
        assert serve.poll() is None and not _health(port, "127.0.0.1")
        run = run_deployment(
            "continuous-training/churn-classifier-manual",
            parameters={"rev": ws.land_day(1, 3_000), "params_file": str(ws.params_file)},
            timeout=240,
        )
        assert run.state.is_completed(), run.state
        assert any("promoted" in t for t in ws.slack.texts())
    finally:
        serve.terminate()
        serve.wait(timeout=STOP_SECONDS)

"""The `ctflows` command as a user runs it: a subprocess, its output and its exit code, against
the real Prefect server, MLflow store and the Kubernetes API stand-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from tests.helpers import ROOT
from tests.integration.test_continuous_training import champion_version
from tests.integration.test_deploy_cluster import (
    _run_flow_process,
    deployment,
    image,
    inject,
    requests_seen,
    standin_with_registry,
    version_image,
)

MODEL = "churn-classifier"


def ctflows(ws, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CTFLOWS_ACTOR": "oncall@test"}
    proc = subprocess.run(
        [sys.executable, "-m", "ctflows", *args, "--project", str(ws.params_file.parent)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if expect is not None:
        assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


def as_json(proc: subprocess.CompletedProcess[str]):
    return json.loads(proc.stdout)


def no_timing_gate(ws) -> None:
    """Promotions here must not depend on the latency of a machine shared with other tests."""
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["gates"]["latency"]["enabled"] = False
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def kube(tmp_path, workspace, oci_registry, serving_base):
    with standin_with_registry(tmp_path, workspace, oci_registry, serving_base) as standin:
        yield standin


def test_status_after_promotion_and_rollback_by_the_command(workspace, kube):
    ws = workspace
    no_timing_gate(ws)
    first = ws.run(ws.land_day(1, 3_000))
    second = ws.run(ws.land_day(2, 24_000))
    assert second.kind == "promoted"

    state = as_json(ctflows(ws, "status", MODEL, "--json"))
    assert state["champion"]["version"] == "2"
    assert state["champion"]["run_id"] == second.run_id
    assert state["champion"]["data_md5"] == second.data_md5
    assert state["champion"]["how"] == "promoted" and "all gates passed" in state["champion"]["why"]
    assert state["cluster"]["model_version"] == "2" and state["cluster"]["matches_champion"]
    assert state["journal"] is None and state["frozen"] is None
    assert [d["kind"] for d in state["decisions"][:2]] == ["promoted", "promoted"]
    text = ctflows(ws, "status", MODEL).stdout
    assert "champion    v2" in text and "matches the champion" in text

    back = ctflows(ws, "rollback", MODEL, "--reason", "latency alarms", "--json")
    assert as_json(back)["kind"] == "rolled-back" and as_json(back)["version"] == "1"
    assert champion_version(ws) == first.version == "1"
    assert image(kube) == version_image(ws, "1")
    state = as_json(ctflows(ws, "status", MODEL, "--json"))
    assert state["champion"]["version"] == "1" and state["cluster"]["matches_champion"]
    assert state["champion"]["promoted_by"] == "oncall@test"
    assert state["champion"]["why"] == "latency alarms"
    history = as_json(ctflows(ws, "history", MODEL, "--json"))
    assert [d["kind"] for d in history] == ["rolled-back", "promoted", "promoted"]
    assert history[0]["actor"] == "oncall@test" and history[0]["detail"] == "latency alarms"
    assert "rolled back to v1" in ws.slack.texts()[-1]

    # promote by hand goes through the same path; the cluster first, then the alias
    ctflows(ws, "promote", MODEL, "2", "--reason", "alarm was the load balancer")
    assert champion_version(ws) == "2" and image(kube) == version_image(ws, "2")


def test_status_shows_the_journal_of_a_killed_run(workspace, kube, prefect_api):
    ws = workspace
    no_timing_gate(ws)
    ws.run(ws.land_day(1, 3_000))
    rev = ws.land_day(2, 24_000)
    seen = len(requests_seen(kube))
    inject(kube, method="GET", path="/deployments/churn-model", delay=60, count=1, skip=2)
    proc = _run_flow_process(ws, rev, prefect_api)
    deadline = time.monotonic() + 240
    while not any(r["method"] == "PATCH" for r in requests_seen(kube)[seen:]):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    state = as_json(ctflows(ws, "status", MODEL, "--json"))
    assert state["journal"]["version"] == "2" and state["journal"]["previous_version"] == "1"
    assert "churn-model" in state["journal"]["deployments"]
    assert "journal     OPEN: move to v2 from v1" in ctflows(ws, "status", MODEL).stdout
    # the repair: a rollback applies the journal first, and the cluster serves v1 again
    ctflows(ws, "rollback", MODEL, "--to", "1", "--reason", "after the crash", expect=None)
    state = as_json(ctflows(ws, "status", MODEL, "--json"))
    assert state["journal"] is None
    assert state["champion"]["version"] == "1" and state["cluster"]["model_version"] == "1"
    assert deployment(kube).spec.template.metadata.annotations["ctflows.io/model-version"] == "1"


def test_freeze_stops_a_promotion_until_unfrozen(workspace):
    ws = workspace
    no_timing_gate(ws)
    ws.run(ws.land_day(1, 3_000))
    frozen = ctflows(ws, "freeze", MODEL, "--reason", "incident 42")
    assert "promotions frozen" in frozen.stdout
    assert ctflows(ws, "freeze", MODEL, "--reason", "again", expect=2).stderr
    rev = ws.land_day(2, 24_000)
    outcome = as_json(ctflows(ws, "run", MODEL, "--local", "--rev", rev, "--json"))
    assert outcome["kind"] == "frozen" and "incident 42" in outcome["error"]
    assert champion_version(ws) == "1"
    assert "promotions are frozen" in ws.slack.texts()[-1]
    refused = ctflows(ws, "promote", MODEL, "1", "--reason", "x", expect=2)
    assert "already is the champion" in refused.stderr or "frozen" in refused.stderr
    state = as_json(ctflows(ws, "status", MODEL, "--json"))
    assert state["frozen"]["reason"] == "incident 42"
    assert state["decisions"][0]["kind"] == "frozen"

    ctflows(ws, "unfreeze", MODEL)
    again = as_json(ctflows(ws, "run", MODEL, "--local", "--rev", rev, "--json"))
    assert again["kind"] == "promoted" and champion_version(ws) == "3"  # v2: the frozen one


def test_bad_input_is_refused_with_exit_2_and_changes_nothing(workspace, tmp_path):
    ws = workspace
    unknown = ctflows(ws, "status", "fraud", expect=2)
    assert "unknown model 'fraud'" in unknown.stderr and MODEL in unknown.stderr
    assert as_json(ctflows(ws, "history", "fraud", "--json", expect=2))["exit_code"] == 2
    nothing = ctflows(ws, "rollback", MODEL, expect=2)
    assert "no champion" in nothing.stderr
    ws.run(ws.land_day(1, 3_000))
    no_previous = ctflows(ws, "rollback", MODEL, expect=2)
    assert "replaced no earlier champion" in no_previous.stderr
    missing = ctflows(ws, "promote", MODEL, "7", "--reason", "x", expect=2)
    assert "no version '7'" in missing.stderr and "registered versions: 1" in missing.stderr
    assert champion_version(ws) == "1"

    project = ws.params_file.parent
    gone = ctflows(ws, "init", "fraud", "--from", str(tmp_path / "nope.parquet"), expect=2)
    assert "cannot read" in gone.stderr and "nope.parquet" in gone.stderr
    odd = pd.DataFrame(
        {"customer_id": [1, 2], "churned": [0, 1], "blob": [b"\x00", b"\x01"], "x": [1.0, 2.0]}
    )
    odd.to_parquet(tmp_path / "odd.parquet")
    bad_type = ctflows(ws, "init", "fraud", "--from", str(tmp_path / "odd.parquet"), expect=2)
    assert "'blob'" in bad_type.stderr
    assert not (project / "models.d").exists()

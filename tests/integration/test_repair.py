"""A deploy a killed run left half-done is put right without waiting for a training run: when a
served process starts, and by the `repair/<model>` run its repair watch starts for a stale journal
— and only then (real Prefect server, MLflow store and the Kubernetes API stand-in)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.helpers import ROOT, STOP_SECONDS, served_deployment, wait_for
from tests.integration import test_deploy_cluster as cluster_tests
from tests.integration.test_continuous_training import champion_version
from tests.integration.test_deploy_cluster import (
    deployment,
    image,
    inject,
    requests_seen,
    version_image,
)

# the same fixture: an OCI registry, a serving base image and the Kubernetes API stand-in
kube = cluster_tests.kube


@contextmanager
def serving(ws, prefect_api: str, log: Path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    env.pop("CTFLOWS_WEBHOOK_SECRET", None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--params", str(ws.params_file)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=STOP_SECONDS)


def waiting_after_patch(requests: list[dict]) -> bool:
    """Whether the Deployment was patched and then read (the rollout wait's first read)."""
    methods = [r["method"] for r in requests if r["path"].endswith("/deployments/churn-model")]
    return "PATCH" in methods and "GET" in methods[methods.index("PATCH") :]


def running_version(kube) -> str | None:
    return deployment(kube).spec.template.metadata.annotations.get("ctflows.io/model-version")


def journal_open(ws) -> bool:
    from tasks.journal import read_journal
    from tasks.train import setup_tracking

    setup_tracking(ws.params)
    return read_journal(ws.params.registry.model_name) is not None


def test_a_served_process_repairs_a_half_done_promotion_before_it_serves(
    workspace, kube, prefect_api, tmp_path
):
    from tasks.cluster import Cluster
    from tasks.deploy import read_templates
    from tasks.journal import write_journal

    ws = workspace
    first = ws.run(ws.land_day(1, 3_000))
    assert first.version == "1"
    before = read_templates(Cluster(ws.params.deploy))
    assert ws.run(ws.land_day(2, 24_000)).version == "2"
    assert image(kube) == version_image(ws, "2")
    # what a run killed after patching the cluster to v2 leaves: the journal still open
    write_journal(ws.params.registry.model_name, "2", "1", before)

    log = tmp_path / "serve.log"
    with serving(ws, prefect_api, log) as proc:
        wait_for(lambda: "serving " in log.read_text(), 180, "serving")
        assert proc.poll() is None
        said = log.read_text()
    assert "repair at start: an earlier run died" in said, said[-3000:]
    assert said.index("repair at start") < said.index("serving ")
    assert champion_version(ws) == running_version(kube) == "1"
    assert image(kube) == version_image(ws, "1") and not journal_open(ws)
    assert any("recovered" in t for t in ws.slack.texts())


def repair_runs(ws, model: str = "churn-classifier") -> list:
    """Every flow run of the `repair/<model>` deployment for this workspace's params, in any
    state (scheduled ones too; the Prefect server is the session's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(f"repair/{model}")
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
        )
    return [r for r in runs if r.parameters.get("params_file") == str(ws.params_file)]


def test_the_watch_repairs_a_served_run_killed_mid_deploy_within_a_minute_and_only_then(
    workspace, kube, prefect_api, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from tasks.journal import read_journal

    ws = workspace
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["triggers"]["repair_seconds"] = 10
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    first = ws.run(ws.land_day(1, 3_000))
    rev = ws.land_day(2, 24_000)

    log = tmp_path / "serve.log"
    with serving(ws, prefect_api, log):
        wait_for(lambda: "serving " in log.read_text(), 180, "serving")
        assert "repair at start: nothing to repair" in log.read_text()
        seen = len(requests_seen(kube))
        inject(kube, method="GET", path="/deployments/churn-model", delay=60, count=1, skip=2)
        manual = "continuous-training/churn-classifier-manual"
        # the name may still be registered by an earlier test's served process: wait for ours
        wait_for(lambda: served_deployment(manual, ws.params_file), 60, "the served deployment")
        run = run_deployment(
            manual,
            parameters={
                "rev": rev,
                "repo": str(ws.data_repo),
                "params_file": str(ws.params_file),
            },
            timeout=0,
        )
        # killed while its rollout wait hangs on the slowed read, not before that read: the
        # slowed read would otherwise be this test's own
        wait_for(lambda: waiting_after_patch(requests_seen(kube)[seen:]), 240, "the rollout")
        entry = read_journal(ws.params.registry.model_name)
        assert entry is not None and entry["flow_run"] == str(run.id)
        os.kill(entry["pid"], signal.SIGKILL)  # the served run's own process, mid-deploy
        killed = time.monotonic()
        assert journal_open(ws) and running_version(kube) == "2"  # the crash left it half-done

        # served for a training run's time with repair_seconds 10: the schedule it replaces
        # had created a repair run every 10 s (and the scheduled ones ahead) by now
        assert repair_runs(ws) == [], "repair runs while there was nothing to repair"

        wait_for(lambda: not journal_open(ws) and running_version(kube) == "1", 180, "the repair")
        took = time.monotonic() - killed
        # the runner marks the run Crashed; the next repair (every 10 s here) applies its
        # journal without waiting for the dead run's training slot (a 60 s lease) to free
        assert took < 60, f"repaired {took:.0f} s after the kill"
        wait_for(lambda: any("recovered" in t for t in ws.slack.texts()), 30, "the notice")
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
        assert state is not None and state.type.value == "CRASHED"
        assert "repairing now" in log.read_text()
        assert "repair watch: churn-classifier has a stale journal" in log.read_text()

        def finished() -> list | None:
            runs = repair_runs(ws)
            return runs if all(r.state and r.state.is_final() for r in runs) else None

        (repaired,) = wait_for(finished, 60, "the repair run to end")  # the watch's one run
        assert repaired.state.is_completed(), repaired.state
    assert champion_version(ws) == first.version == "1"
    assert image(kube) == version_image(ws, "1")

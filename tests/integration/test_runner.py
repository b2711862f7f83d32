"""Served flow runs started from the preloaded fork server (deployments/runner.py), end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil
import yaml
from prefect.client.orchestration import get_client

from deployments.definitions import REPAIR_FLOW, TRAINING_FLOW, model_deployment
from tests.helpers import ROOT, STOP_SECONDS, served_deployment, wait_for


def _forked_run_seen(serve: psutil.Process, stop: threading.Event, seen: list[int]) -> None:
    """Record processes forked by the fork server under ``serve`` (not the server itself)."""
    while not stop.is_set():
        try:
            for proc in serve.children(recursive=True):
                parent = proc.parent()
                if (
                    parent
                    and parent.pid != serve.pid
                    and "forkserver" in " ".join(parent.cmdline())
                ):
                    seen.append(proc.pid)
        except psutil.Error:
            pass
        stop.wait(0.05)


def test_served_runs_are_forked_from_the_preloaded_server(workspace, prefect_api, tmp_path):
    """A run created on the server starts at once, forked from the preloaded server: the
    runner polls only every 60 s here, so only the flow-run event can wake it in time."""
    rev = workspace.land_day(1, 3_000)
    rev2 = workspace.land_day(2, 3_000)
    raw = yaml.safe_load(workspace.params_file.read_text())
    raw["triggers"]["poll_seconds"] = 60
    workspace.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    env["CTFLOWS_SLACK_WEBHOOK_URL"] = workspace.slack.url
    env.pop("CTFLOWS_RUNNER", None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--params", str(workspace.params_file)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stop, seen = threading.Event(), []
    watcher = threading.Thread(
        target=_forked_run_seen, args=(psutil.Process(serve.pid), stop, seen)
    )
    watcher.start()
    try:
        with get_client(sync_client=True) as client:
            model = workspace.params.registry.model_name
            name = f"{TRAINING_FLOW}/{model_deployment(model, 'manual')}"
            manual = wait_for(
                lambda: served_deployment(name, workspace.params_file), 180, "the deployments"
            )
            wait_for(lambda: "flow runs start from" in log.read_text(), 60, "the runner to start")
            time.sleep(3)  # past the runner's first poll: the next one is a minute away
            run = client.create_flow_run_from_deployment(
                manual.id,
                parameters={"rev": rev, "params_file": str(workspace.params_file)},
            )
            created = time.monotonic()

            def running():
                state = client.read_flow_run(run.id).state
                return state if state and (state.is_running() or state.is_final()) else None

            wait_for(running, 30, "the served run to start", step=0.2)
            started_after = time.monotonic() - created

            def final():
                state = client.read_flow_run(run.id).state
                return state if state and state.is_final() else None

            state = wait_for(final, 300, "the served run to finish")
        assert state.is_completed(), (state, log.read_text()[-2000:])
        assert started_after < 15, f"Running {started_after:.1f} s after creation: not woken"
        assert "not woken by flow-run events" not in log.read_text()
        assert any("promoted" in text for text in workspace.slack.texts())
        assert seen, "no flow-run process was forked from the fork server"
        assert "flow runs start by forkserver" in log.read_text()

        # SIGTERM while the runner is starting a run: it must still stop (Prefect's own
        # handler raised SystemExit inside the run's start, which swallowed it). A run
        # already started finishes; a run created after SIGTERM is not started.
        repair = served_deployment(f"{REPAIR_FLOW}/{model}", workspace.params_file)
        assert repair is not None
        with get_client(sync_client=True) as client:
            late = client.create_flow_run_from_deployment(
                manual.id, parameters={"rev": rev2, "params_file": str(workspace.params_file)}
            )
            time.sleep(0.2)  # woken at once: the start is under way now
            serve.terminate()
            after = client.create_flow_run_from_deployment(repair.id)
            try:
                serve.wait(timeout=STOP_SECONDS)
                late_state = client.read_flow_run(late.id).state
                after_state = client.read_flow_run(after.id).state
            finally:
                for left in (late, after):  # no later served test may pick them up
                    client.delete_flow_run(left.id)
        assert "SIGTERM received, stopping the runner" in log.read_text()
        assert after_state is not None and after_state.is_scheduled(), after_state
        assert late_state is not None
        tail = log.read_text()[-3000:]
        assert late_state.is_scheduled() or late_state.is_completed(), (late_state, tail)
    finally:
        stop.set()
        watcher.join()
        serve.terminate()
        serve.wait(timeout=STOP_SECONDS)

"""Outages fail fast and say so: MLflow down from the start, or dying while a run logs to it.

The run must fail within the deadlines of ``timeouts`` (not after MLflow's own minutes of
retries), name the service and its address without credentials, and keep the failure
notification (the outbox when Slack is down too).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tasks.services import ServiceUnavailable

# generous against a loaded machine, far below MLflow's default (7 retries, 120 s timeouts)
BOUND_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outbox(ws) -> list[dict]:
    path = ws.params.state_dir / "outbox" / "slack.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_closed_port_fails_fast_naming_mlflow_and_the_outbox_keeps_it(workspace, monkeypatch):
    ws = workspace
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ml:hunter2@127.0.0.1:{port}")
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)  # the bound must come from params
    ws.slack.status = 503  # Slack is down as well
    rev = ws.land_day(1, 2_000)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as err:
        ws.run(rev)
    assert time.monotonic() - started < BOUND_SECONDS
    message = str(err.value)
    assert "MLflow" in message and f"127.0.0.1:{port}" in message and "hunter2" not in message
    kept = outbox(ws)
    assert kept, "the failure notification was lost"
    text = json.dumps(kept[-1])
    assert "failed at setup" in text and f"127.0.0.1:{port}" in text and "MLflow" in text
    assert "hunter2" not in text
    assert not (ws.params.state_dir / "deploy").exists()  # nothing deployed


class TrackingServer:
    """A real `mlflow server` on loopback with its SQLite store in ``folder``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db = folder / "mlflow.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow = Path(sys.executable).parent / "mlflow"
        self.log = (folder / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--artifacts-destination",
                str(folder / "artifacts"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def runs(self) -> int:
        if not self.db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as db:
                return int(db.execute("select count(*) from runs").fetchone()[0])
        except sqlite3.Error:
            return 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.log.close()


def test_server_dying_while_a_run_logs_fails_the_run_within_the_bound(
    workspace, monkeypatch, tmp_path
):
    ws = workspace
    with TrackingServer(tmp_path / "mlflow-server") as server:
        server.wait_healthy()
        user_uri = server.url.replace("http://", "http://ml:s3cret@")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", user_uri)
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            monkeypatch.delenv(key, raising=False)
        rev = ws.land_day(1, 2_000)
        killed_at: list[float] = []

        def kill_once_a_run_logs() -> None:
            deadline = time.monotonic() + 300
            while server.runs() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.kill()
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill_once_a_run_logs, daemon=True)
        killer.start()
        with pytest.raises(ServiceUnavailable) as err:
            ws.run(rev)
        failed_at = time.monotonic()
        killer.join(5)
    assert killed_at, "the server was never killed: the run failed before it logged"
    assert failed_at - killed_at[0] < BOUND_SECONDS
    message = str(err.value)
    assert "MLflow" in message and f"127.0.0.1:{server.port}" in message
    assert "s3cret" not in message
    failure = ws.slack.messages[-1]
    text = json.dumps(failure)
    assert "failed at" in failure["text"] and "MLflow" in text and "s3cret" not in text
    assert not (ws.params.state_dir / "deploy").exists()  # nothing deployed

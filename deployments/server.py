"""A real `prefect server start` on loopback, for the demo, the benchmark and the tests.

An ephemeral Prefect server runs no schedules and no triggers, and its SQLite file is not
shared with the UI; a started server is what deployments need and what the UI shows.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.errors import CtflowsError


class ServerError(CtflowsError, RuntimeError):
    """The Prefect server did not start or did not answer."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise ServerError(f"Prefect server at {api_url} not healthy after {timeout:.0f}s")


def runtime_settings() -> dict[Any, Any]:
    """Prefect settings of every long-lived ctflows process (demo, bench, serve, tests).

    Flow-run heartbeats are off: in Prefect 3.8 the heartbeat thread is joined at the end of
    every run and sleeps in 1 s steps, which added 0.5-1 s to each run (measured by
    `make bench`); the open-source server acts on heartbeats only through an automation
    you create. Set PREFECT_FLOWS_HEARTBEAT_FREQUENCY in the environment to keep them.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        return {}
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


def _flush_prefect_logs() -> None:
    """Send buffered run logs while the server is still up (else they are lost at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


@contextlib.contextmanager
def prefect_server(home: Path, port: int | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Start ``prefect server start`` with its database in ``home``; yield its API URL.

    While inside, ``PREFECT_API_URL`` points this process (and its children) at the server.
    """
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    try:
        wait_healthy(api_url, timeout, proc)
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_HOME"] = str(home.resolve())
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url, **runtime_settings()}):
            try:
                yield api_url
            finally:
                _flush_prefect_logs()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

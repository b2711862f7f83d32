"""A real `prefect server start` on loopback, for the demo, the benchmark and the tests, and
the record of which Prefect server a project's `make serve` uses.

An ephemeral Prefect server runs no schedules and no triggers, and its SQLite file is not
shared with the UI; a started server is what deployments need and what the UI shows.

`make serve` writes the address of the server it serves on to ``<state_dir>/prefect/server.json``
while it runs; `ctflows` reads it (and checks that the server answers) when PREFECT_API_URL is
not set, so operator commands take the same training slot as the served runs.
"""

from __future__ import annotations

import contextlib
import json
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
            refresh_global_settings()  # threads (the webhook receiver) talk to it as well
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
        refresh_global_settings()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def refresh_global_settings() -> None:
    """Prefect's process-wide settings from the environment as it is now.

    A thread starts without the context of the thread that started it, and reads Prefect's
    settings from the process-wide context, built when Prefect was imported: without this, a
    thread would not see a server started since, and Prefect would start a temporary second
    server for it on the same database.
    """
    import prefect.context

    prefect.context.refresh_global_settings_context()


def server_file(state_dir: Path) -> Path:
    """Where `make serve` records the Prefect server it serves on."""
    return state_dir / "prefect" / "server.json"


@contextlib.contextmanager
def serving_on(
    state_dir: Path, api_url: str, announce: bool = True, webhook: str | None = None
) -> Iterator[Path]:
    """Record ``api_url`` as the project's Prefect server while inside (and ``webhook``, the
    receiver `make serve` runs, if any), and print the line that points a shell at it
    (``announce``)."""
    path = server_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"api_url": api_url, "pid": os.getpid(), "host": socket.gethostname()}
    if webhook:
        entry["webhook"] = webhook
    path.write_text(json.dumps(entry) + "\n")
    if announce:
        print(
            f"Prefect API on {api_url}; `ctflows` finds it by itself (recorded in {path}); for "
            f"`prefect` commands in another shell:\n  export PREFECT_API_URL={api_url}",
            flush=True,
        )
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            if json.loads(path.read_text()).get("pid") == os.getpid():  # not a newer serve's
                path.unlink()


def answers(api_url: str, timeout: float = 3.0) -> bool:
    """Whether a Prefect server answers ``/health`` at ``api_url`` within ``timeout``."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def recorded_server(state_dir: Path, timeout: float = 3.0) -> str | None:
    """The API URL of the Prefect server `make serve` serves this project on, if it answers."""
    path = server_file(state_dir)
    try:
        entry = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    url = entry.get("api_url") if isinstance(entry, dict) else None
    return str(url) if url and answers(str(url), timeout) else None


def recorded_webhook(state_dir: Path, timeout: float = 3.0) -> str | None:
    """The webhook receiver `make serve` runs for this project, if its server answers."""
    if recorded_server(state_dir, timeout) is None:
        return None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        entry = json.loads(server_file(state_dir).read_text())
        url = entry.get("webhook") if isinstance(entry, dict) else None
        return str(url) if url else None
    return None

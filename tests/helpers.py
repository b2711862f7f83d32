"""Test helpers shared by unit and integration tests: small params and a Slack recorder."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tasks.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def write_params(folder: Path, **overrides: dict[str, Any]) -> Path:
    """The repo's params.yaml with state in ``folder``, small models, and section overrides."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["state_dir"] = str(folder / "state")
    raw["validate"]["suite"] = str(ROOT / "expectations" / "churn_batch.json")
    raw["train"]["hyperparameters"].update(num_leaves=15)
    raw["deploy"]["target"] = "dry-run"
    # small and tolerant of a loaded CI machine (noise doubles a 6 ms p95); a 5x-slower model
    # still fails it
    raw["gates"]["latency"].update(batch_size=200, repeats=20, warmup=2)
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = folder / "params.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def store(params: Params) -> Any:
    """An MLflow client on the workspace's store for runs *and* registry.

    A bare ``MlflowClient(uri)`` takes the registry from ``mlflow.set_registry_uri`` when an
    earlier test in the process set it, and would read another workspace's aliases."""
    from mlflow.tracking import MlflowClient

    from tasks.train import tracking_uri

    uri = tracking_uri(params)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def small_params(folder: Path, **overrides: dict[str, Any]) -> Params:
    return load_params(write_params(folder, **overrides))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.5) -> Any:
    """``predicate()``'s first truthy value, looked at every ``step`` seconds; AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# How long a test waits for `deployments.serve` to end after SIGTERM. The runner lets runs it
# started finish and pauses its deployments first; a SQLite-backed Prefect server can stall
# every write for its 60 s busy timeout meanwhile (seen in CI: an internal write-lock wait).
STOP_SECONDS = 180


def served_deployment(name: str, params_file: Path | None = None) -> Any | None:
    """Deployment ``name`` as registered on the Prefect server (``PREFECT_API_URL``), or None;
    with ``params_file``, only if it serves that file (an earlier test's `deployments.serve`
    may have registered the same name for its own)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    if params_file is not None and found.parameters.get("params_file") != str(params_file):
        return None
    return found


class SlackRecorder:
    """A local HTTP server standing in for a Slack incoming webhook; it records every post."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 200
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if recorder.status == 200:
                    recorder.messages.append(json.loads(body))
                    reply = b"ok"
                else:
                    reply = b"service_unavailable"
                self.send_response(recorder.status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlackRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def texts(self) -> list[str]:
        return [m.get("text", "") for m in self.messages]

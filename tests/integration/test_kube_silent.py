"""A Kubernetes API that accepts connections and never answers (a hung apiserver, a
half-open tunnel): the deploy step fails within ``timeouts.kubernetes`` (times
``deploy.api_retries``), naming the Kubernetes API and its address; the champion alias and
the cluster stay as they were and the failure notification is kept (the outbox when Slack is
down too)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tasks.cluster import DeployError

# generous against a loaded machine; a hang would be the 10 s default times every retry, or
# forever when nothing bounds the read
BOUND_SECONDS = 30


class Silent:
    """Where the silent API listens, and the connections it has taken (each one request)."""

    def __init__(self, port: int, held: list[socket.socket]) -> None:
        self.port = port
        self.held = held


@contextmanager
def silent_api() -> Iterator[Silent]:
    """A loopback TCP server that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield Silent(int(listener.getsockname()[1]), held)
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def silent_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig naming ``server`` as its only cluster (token credentials, as in CI)."""
    cluster: dict[str, object] = {"server": server}
    if server.startswith("https://"):
        cluster["insecure-skip-tls-verify"] = True
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hung", "cluster": cluster}],
        "users": [{"name": "ci", "user": {"token": "s3cr3t-token"}}],
        "contexts": [{"name": "hung", "context": {"cluster": "hung", "user": "ci"}}],
        "current-context": "hung",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def point_at(params_file: Path, kubeconfig: Path, timeout: float, retries: int) -> None:
    raw = yaml.safe_load(params_file.read_text())
    raw["deploy"].update(
        target="cluster", kubeconfig=str(kubeconfig), context="hung", api_retries=retries
    )
    raw.setdefault("timeouts", {})["kubernetes"] = timeout
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_check_deployment_fails_within_the_deadline_naming_the_api(workspace, tmp_path, scheme):
    from tasks.deploy import check_deployment

    with silent_api() as api:
        server = f"{scheme}://127.0.0.1:{api.port}"
        point_at(workspace.params_file, silent_kubeconfig(tmp_path / "kc", server), 1.0, 1)
        started = time.monotonic()
        with pytest.raises(DeployError) as err:
            check_deployment.fn(workspace.params)
        took = time.monotonic() - started
        attempts = len(api.held)
    assert took < BOUND_SECONDS, f"check_deployment took {took:.1f} s against a silent API"
    # each attempt waits one deadline: the first and deploy.api_retries more, no hidden ones
    # (urllib3 would otherwise retry every timed-out request three times on its own)
    assert attempts == 2, f"{attempts} requests, each waiting timeouts.kubernetes"
    message = str(err.value)
    assert f"Kubernetes API at {server}" in message
    assert "timeouts.kubernetes" in message and "s3cr3t-token" not in message


def test_a_run_against_a_silent_api_fails_keeps_the_champion_and_the_notification(
    workspace, tmp_path, oci_registry, serving_base
):
    from tests.integration.test_continuous_training import champion_version
    from tests.integration.test_deploy_cluster import image, standin_with_registry, version_image

    ws = workspace
    with standin_with_registry(tmp_path, ws, oci_registry, serving_base) as kube:
        first = ws.run(ws.land_day(1, 3_000))
        assert first.kind == "promoted"
        before = image(kube)
        with silent_api() as api:
            port = api.port
            server = f"https://127.0.0.1:{port}"
            point_at(ws.params_file, silent_kubeconfig(tmp_path / "hung", server), 1.0, 1)
            ws.slack.status = 503  # Slack is down as well
            rev = ws.land_day(2, 24_000)
            started = time.monotonic()
            with pytest.raises(DeployError, match="Kubernetes API at") as err:
                ws.run(rev)
            took = time.monotonic() - started
        assert server in str(err.value)
        assert champion_version(ws) == first.version
        assert image(kube) == before == version_image(ws, first.version)
    assert took < BOUND_SECONDS + 120, f"the run took {took:.0f} s"  # training included
    path = ws.params.state_dir / "outbox" / "slack.jsonl"
    kept = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    assert kept, "the failure notification was lost"
    text = json.dumps(kept[-1])
    assert "Kubernetes API" in text and f"127.0.0.1:{port}" in text
    assert "s3cr3t-token" not in text

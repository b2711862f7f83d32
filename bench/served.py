"""Served runs as a user meets them: a real Prefect server, `deployments.serve`, the signed
webhook and the Kubernetes API stand-in, timed from the outside.

`served_stack()` starts all of it on loopback under one state folder; `Stack.land()` publishes
a data version (git + DVC push), `Stack.post()` sends the signed webhook, and `Stack.timing()`
reads back from the Prefect API when each stage a user waits for ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_PATH = "data/batch.parquet"
SERVE = [sys.executable, "-m", "deployments.serve"]


class BenchError(RuntimeError):
    """A measured run failed, or skipped where it should have trained: no figure from it."""


@dataclass
class RunTiming:
    """Seconds from the accepted request (or landed data) to each stage of one served run."""

    run_id: str
    state: str
    accepted_to_running: float
    total: float
    tasks: dict[str, float]
    decision: float | None = None
    rollout: float | None = None
    landed_to_rollout: float | None = None
    peak_rss_bytes: int | None = None

    @property
    def trained(self) -> bool:
        return "train-model" in self.tasks

    @property
    def promoted(self) -> bool:
        return "deploy-model" in self.tasks


@dataclass
class Stack:
    root: Path
    params_file: Path
    data_repo: Path
    hook_url: str
    secret: str
    kube_url: str
    serve: subprocess.Popen[bytes]
    client: Any
    log: Path
    rss: RssSampler = field(init=False)
    land_rev: str = ""
    landed_deployment: str = ""
    manual: str = ""

    def __post_init__(self) -> None:
        from deployments.definitions import (
            TRAINING_FLOW,
            data_landed_deployment,
            model_deployment,
        )
        from tasks.config import load_params

        params = load_params(self.params_file)
        self.rss = RssSampler(self.serve.pid)
        self.landed_deployment = data_landed_deployment(params)
        self.manual = f"{TRAINING_FLOW}/{model_deployment(params.registry.model_name, 'manual')}"

    def land(self, df: Any, message: str) -> tuple[str, float]:
        """Publish ``df`` as a new data version; return its revision and when it landed."""
        from tasks.data import publish_batch

        rev = publish_batch(self.data_repo, df, DATA_PATH, message)
        return rev, time.time()

    def post(self, rev: str) -> tuple[str, float]:
        """POST the signed data-landed webhook; return the flow run id and when it was accepted."""
        from deployments.webhook import sign

        body = json.dumps({"path": DATA_PATH, "rev": rev}).encode()
        stamp = str(int(time.time()))
        request = urllib.request.Request(
            self.hook_url,
            data=body,
            method="POST",
            headers={
                "X-Ctflows-Timestamp": stamp,
                "X-Ctflows-Signature": sign(self.secret, stamp, body),
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise BenchError(f"webhook answered {exc.code}: {exc.read()[:300]!r}") from exc
        return str(answer["flow_run_id"]), time.time()

    def run_manual(self, rev: str) -> tuple[str, float]:
        """A run of `continuous-training/manual` on ``rev`` (what a schedule or a person starts)."""
        deployment = self.client.read_deployment_by_name(self.manual)
        run = self.client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"rev": rev, "path": DATA_PATH, "params_file": str(self.params_file)},
        )
        return str(run.id), time.time()

    def wait(self, run_id: str, timeout: float) -> str:
        """Wait until the run is final; return its state type."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._state(run_id)
            if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return state
            if self.serve.poll() is not None:
                raise BenchError(
                    f"deployments.serve exited ({self.serve.returncode}); see {self.log}"
                )
            time.sleep(0.25)  # the times come from the states Prefect recorded, not from here
        raise BenchError(f"flow run {run_id} not finished after {timeout:.0f} s; see {self.log}")

    def _state(self, run_id: str) -> str:
        run = self.client.read_flow_run(run_id)
        return str(run.state.type.value) if run.state else ""

    def timing(self, run_id: str, accepted: float, landed: float | None = None) -> RunTiming:
        """Stage times of a finished run, from the states and task runs Prefect recorded."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        states = self.client.read_flow_run_states(run_id)
        stamps = {s.type.value: s.timestamp.timestamp() for s in states}
        final = states[-1].type.value if states else ""
        task_runs = self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        tasks: dict[str, float] = {}
        ends: dict[str, float] = {}
        for task in task_runs:
            if task.start_time is None or task.end_time is None:
                continue
            name = task.name.rsplit("-", 1)[0]
            tasks[name] = tasks.get(name, 0.0) + (task.end_time - task.start_time).total_seconds()
            ends[name] = max(ends.get(name, 0.0), task.end_time.timestamp())
        end = stamps.get(final, accepted)
        timing = RunTiming(
            run_id=run_id,
            state=final,
            accepted_to_running=stamps.get("RUNNING", end) - accepted,
            total=end - accepted,
            tasks={k: round(v, 3) for k, v in sorted(tasks.items())},
        )
        if "evaluate-candidate" in ends:
            timing.decision = ends["evaluate-candidate"] - accepted
        if "deploy-model" in ends:
            timing.rollout = ends["deploy-model"] - accepted
            if landed is not None:
                timing.landed_to_rollout = ends["deploy-model"] - landed
        return timing

    def library_rss(self) -> int | None:
        """Resident memory of the fork server (the preloaded libraries alone), if there is one:
        a forked run shares these pages, and its RSS counts them."""
        import psutil

        for child in psutil.Process(self.serve.pid).children():
            with contextlib.suppress(psutil.Error):
                if "forkserver" in " ".join(child.cmdline()):
                    return int(child.memory_info().rss)
        return None

    def served_image(self) -> str:
        """The image the stand-in's serving Deployment runs now."""
        url = f"{self.kube_url}/apis/apps/v1/namespaces/ctflows/deployments/churn-model"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        return str(body["spec"]["template"]["spec"]["containers"][0]["image"])


class RssSampler:
    """Peak resident memory of the processes a served run starts under ``pid``.

    Light on purpose, so as not to slow what it measures: a few reads a second, of the
    kernel's own high-water mark of each new process (VmHWM: its peak resident set, exact
    whenever it was reached, where sampling the current RSS would miss short peaks)."""

    def __init__(self, pid: int, step: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.step = step
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: set[int] = set()

    def start(self) -> None:
        self._known = {p.pid for p in self.root.children(recursive=True)}
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                for child in self.root.children(recursive=True):
                    if child.pid not in self._known:
                        self.peak = max(self.peak, _high_water_mark(child))
            self._stop.wait(self.step)


def _high_water_mark(process: Any) -> int:
    """The process's peak resident set so far (Linux VmHWM); its current RSS elsewhere."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(process.memory_info().rss)


def write_params(root: Path, kubeconfig: Path, data_repo: Path, registry: str, base: str) -> Path:
    """params.yaml as shipped, with state under ``root``, the stand-in as cluster, images pushed
    to the loopback registry, and gate bounds that compute everything but never block."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["state_dir"] = str(root / "state")
    raw["validate"]["suite"] = str(ROOT / raw["validate"]["suite"])
    raw["data"]["repo"] = str(data_repo)
    raw["deploy"].update(target="cluster", kubeconfig=str(kubeconfig))
    raw["image"].update(repository=f"{registry}/churn-model", base=base)
    # every gate is computed as shipped, with bounds that cannot block: the decision is always
    # to promote, so every run is timed through the rollout whatever the machine's noise
    gates = raw["gates"]
    gates["significance"]["min_improvement"] = -1e12  # bootstrapped as shipped, never blocks
    gates["no_regression"]["tolerance"] = 1.0
    for section in gates.values():
        if isinstance(section, dict):
            for key, value in section.items():
                if key.startswith("max_") and isinstance(value, int | float):
                    unbounded = value > 1 or "psi" in key
                    section[key] = int(1e12) if unbounded else 1.0
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@contextlib.contextmanager
def served_stack(root: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Prefect server, the stand-in cluster and `python -m deployments.serve --webhook-port`."""
    from prefect.client.orchestration import get_client

    from deployments.server import free_port, prefect_server
    from tasks.data import init_data_repo
    from tests.kube_standin import Standin
    from tests.oci_registry import docker_registry, push_serving_base

    root.mkdir(parents=True, exist_ok=True)
    data_repo = root / "data-repo"
    init_data_repo(data_repo, root / "dvc-remote")
    secret, port = "bench-secret", free_port()
    log = root / "serve.log"
    with (
        docker_registry(root / "oci-registry") as registry,
        Standin(root / "kubeconfig", ready_delay=0.3, registry=registry) as kube,
        prefect_server(root / "prefect") as api_url,
        log.open("ab") as log_fh,
    ):
        base = push_serving_base(registry)
        params_file = write_params(root, kube.kubeconfig, data_repo, registry, base)
        serve_env = {
            **os.environ,
            **(env or {}),
            "PREFECT_API_URL": api_url,
            "PYTHONPATH": str(ROOT),
            "CTFLOWS_WEBHOOK_SECRET": secret,
        }
        serve_env.pop("CTFLOWS_SLACK_WEBHOOK_URL", None)  # the JSONL outbox, no network
        serve = subprocess.Popen(
            [*SERVE, "--params", str(params_file), "--webhook-port", str(port)],
            cwd=ROOT,
            env=serve_env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
        try:
            with get_client(sync_client=True) as client:
                stack = Stack(
                    root,
                    params_file,
                    data_repo,
                    f"http://127.0.0.1:{port}/hooks/data-landed",
                    secret,
                    kube.url,
                    serve,
                    client,
                    log,
                )
                _wait(lambda: _deployed(client, stack.landed_deployment), 120, serve)
                _wait(lambda: _up(f"http://127.0.0.1:{port}/health"), 60, serve)
                yield stack
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()


def _deployed(client: Any, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise BenchError(f"deployments.serve exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise BenchError(f"deployments.serve not ready after {timeout:.0f} s")
        time.sleep(0.2)

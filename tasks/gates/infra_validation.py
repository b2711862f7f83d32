"""Gate ``infra_validation``: run the built model image before the alias moves (TFX's
InfraValidator).

The image that was just pushed is pulled by its digest and started as a container with the
memory limit of the manifests; it must answer ``/ready`` 200 within ``ready_seconds``, answer a
probe batch of holdout rows on ``/predict`` with the candidate's own scores (exactly, or within
``tolerance``), and still be running, not killed by the kernel for memory, afterwards. Any
failure rejects the candidate with the container's last log lines in the reason; the alias and
the cluster are not touched. Where it runs is ``runtime``: ``podman`` (with runc) on the flow's
machine; a runtime that is not installed is an error, never a skip.
"""

from __future__ import annotations

import json
import logging
import platform as host_platform
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.containers import ContainerError, Podman, tail_of
from tasks.oci_layout import ImageError
from tasks.registry import Reference, is_loopback
from tasks.reports import GateResult

if TYPE_CHECKING:
    import pandas as pd

    from tasks.config.gates import InfraValidationParams
    from tasks.image_build import ModelImage

log = logging.getLogger(__name__)

NAME = "infra_validation"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}


@dataclass(frozen=True)
class Probe:
    """What the container answered: seconds from start to ready, the scores, peak memory."""

    ready_seconds: float
    scores: list[float]
    peak_bytes: int | None


class InfraFailure(Exception):
    """Internal: why the container failed validation (becomes a failed gate result)."""

    def __init__(self, what: str, logs: str = "") -> None:
        self.what, self.logs = what, logs
        super().__init__(what)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_runnable(config: dict[str, Any], image: str) -> None:
    """Refuse before running: an image for another platform, or one with no command."""
    want = ARCH.get(host_platform.machine(), host_platform.machine())
    found = f"{config.get('Os')}/{config.get('Architecture')}"
    if found != f"linux/{want}":
        raise ImageError(f"image {image} is for {found}; this machine runs linux/{want}")
    run = config.get("Config") or {}
    if not (run.get("Cmd") or run.get("Entrypoint")):
        raise ImageError(f"image {image} has no command (neither Cmd nor Entrypoint) to run")


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def load_failure(body: str) -> str | None:
    """The app's reason when /ready says the model failed to load (not: still loading)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    reason = answer.get("reason") if isinstance(answer, dict) else None
    return str(reason) if reason and reason != "loading" else None


def exited(state: dict[str, Any], limit: int) -> str:
    """Why a container stopped, from its state: the exit code, or a kill at the memory limit
    (from conmon's record; a bare SIGKILL under a limit is most likely that too)."""
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return (
            f"the container was killed for memory (exit {code}): over its memory limit of "
            f"{limit / 2**20:.0f} MiB"
        )
    if code == 137:
        return (
            f"the container was killed (exit 137, SIGKILL), most likely over its memory limit "
            f"of {limit / 2**20:.0f} MiB"
        )
    return f"the container exited with code {code}"


def wait_ready(podman: Podman, name: str, url: str, seconds: float, limit: int) -> float:
    """Seconds until ``/ready`` answers 200; InfraFailure if the container exits or the
    deadline passes first (naming the last answer)."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < seconds:
        state = podman.state(name)
        if not state.get("Running"):
            raise InfraFailure(exited(state, limit))
        try:
            status, body = _get(f"{url}/ready")
            if status == 200:
                return time.monotonic() - started
            last = f"{status} {body[:300]}"
            reason = load_failure(body)
            if reason:  # the app does not try again: waiting longer changes nothing
                raise InfraFailure(f"the model failed to load in the container: {reason}")
        except OSError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.25)
    raise InfraFailure(f"never became ready within {seconds:.0f}s (last /ready: {last})")


def run_probe(
    podman: Podman, image: str, rows: pd.DataFrame, params: InfraValidationParams
) -> Probe:
    """Start ``image``, wait for ready, score ``rows``, stop it with SIGTERM; InfraFailure
    (with the container's log) when any step fails."""
    name = f"ctflows-infra-{uuid.uuid4().hex[:10]}"
    running = podman.start(
        image,
        name,
        free_port(),
        env={"CTFLOWS_INFERENCE_LOG": "off"},
        memory_bytes=params.memory_limit_bytes,
    )
    try:
        try:
            limit = params.memory_limit_bytes
            ready = wait_ready(podman, name, running.url, params.ready_seconds, limit)
            records = json.loads(rows.to_json(orient="records"))
            try:
                answer = post_json(f"{running.url}/predict", {"records": records}, 60)
            except (OSError, ValueError) as exc:
                raise InfraFailure(f"/predict failed: {type(exc).__name__}: {exc}") from exc
            peak = podman.peak_memory(running.id)
            state = podman.state(name)
            if not state.get("Running"):
                raise InfraFailure(f"{exited(state, limit)}, while answering the probe")
            return Probe(ready, [float(s) for s in answer["scores"]], peak)
        except InfraFailure as exc:
            raise InfraFailure(exc.what, podman.logs(name)) from exc
    finally:
        podman.stop(name, 10)
        podman.remove(name)


def compare_scores(served: list[float], expected: list[float], tolerance: float) -> str | None:
    """None when the served scores are the candidate's; else what differs."""
    if len(served) != len(expected):
        return f"answered {len(served)} scores for {len(expected)} rows"
    diffs = [abs(a - b) for a, b in zip(served, expected, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__) if diffs else 0
    if diffs and diffs[worst] > tolerance:
        return (
            f"answered other scores than the candidate: row {worst} served {served[worst]!r}, "
            f"candidate {expected[worst]!r} (|diff| {diffs[worst]:.3g} > tolerance {tolerance})"
        )
    return None


def own_lines(logs: str) -> str:
    """The container's log without the access lines of the gate's own /ready polling, which
    would push what the app said out of the tail."""
    return "\n".join(line for line in logs.splitlines() if '"GET /ready HTTP/1.1"' not in line)


def validate_image(
    built: ModelImage,
    rows: pd.DataFrame,
    expected: list[float],
    params: InfraValidationParams,
    podman: Podman | None = None,
) -> GateResult:
    """Run the pushed image and check it; the result fails (with the log tail) or passes."""
    if built.kind != "serving" or not built.repository:
        raise ImageError(
            "gates.infra_validation runs the serving image pulled from its registry: set "
            "image.base and image.repository (a model-only image does not run on its own)"
        )
    engine = podman or Podman(runtime=params.runtime_binary)
    ref = built.reference
    engine.pull(ref, is_loopback(Reference.parse(ref).registry))
    try:
        check_runnable(engine.inspect_image(ref), ref)
        probe = run_probe(engine, ref, rows, params)
    except InfraFailure as exc:
        tail = tail_of(own_lines(exc.logs), params.log_lines)
        reason = f"{exc.what}; container log tail:\n{tail}" if tail else exc.what
        return GateResult(NAME, "failed", reason, "ready_seconds", gate=NAME)
    except ContainerError as exc:
        return GateResult(NAME, "failed", str(exc), gate=NAME)
    finally:  # the model's layer is not kept on the flow's machine (the base's layers are)
        engine.remove_image(ref)
    mismatch = compare_scores(probe.scores, expected, params.tolerance)
    if mismatch:
        return GateResult(NAME, "failed", mismatch, "ready_seconds", probe.ready_seconds, gate=NAME)
    peak = f", peak memory {probe.peak_bytes / 2**20:.0f} MiB" if probe.peak_bytes else ""
    return GateResult(
        NAME,
        "passed",
        f"{ref} ready in {probe.ready_seconds:.1f}s, answered {len(rows)} holdout rows with the "
        f"candidate's scores within {params.tolerance}{peak} "
        f"(limit {params.memory_limit_bytes / 2**20:.0f} MiB)",
        "ready_seconds",
        probe.ready_seconds,
        threshold=params.ready_seconds,
        gate=NAME,
    )

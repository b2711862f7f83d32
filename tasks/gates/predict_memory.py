"""Gate `predict_memory`: peak memory of one prediction call within a budget.

Measured in a fresh process (``tasks.gates.memory_probe``): the larger of the resident-set
growth (native memory included) and the peak of Python allocations during one call on the
latency batch. If the model cannot be loaded in a fresh process, it is measured in this one
and the reason says so.

A flow may start that process ahead (``probe_scope`` + ``start_probe``), while it trains:
it imports the model's libraries and waits; the gate hands it the model when it runs."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    import pandas as pd

    from tasks.config import Params
    from tasks.gates.evidence import Evidence

ROOT = Path(__file__).resolve().parents[2]
_measured: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], tuple[float, str]]] = (
    weakref.WeakKeyDictionary()
)


class PredictMemoryParams(GateRule):
    max_peak_bytes: int | None = Field(512_000_000, gt=0)
    batch_rows: int | None = Field(None, ge=1)  # default: the latency gate's batch size
    isolated: bool = True  # false: measure in this process (faster, Python allocations only)
    timeout_seconds: float = Field(120.0, gt=0)


class ProbeProcess:
    """A fresh interpreter running ``tasks.gates.memory_probe --serve``: it imports
    ``preload`` and waits for one model to measure."""

    def __init__(self, preload: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.gates.memory_probe", "--serve", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def measure(self, model_path: Path, batch_path: Path, task: str, timeout: float) -> str:
        """The probe's stdout; RuntimeError with its last stderr line if it failed."""
        try:
            out, err = self.proc.communicate(f"{model_path} {batch_path} {task}\n", timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise
        if self.proc.returncode != 0:
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "no output")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


_AHEAD: contextvars.ContextVar[list[ProbeProcess] | None] = contextvars.ContextVar(
    "ctflows_memory_probe", default=None
)


@contextlib.contextmanager
def probe_scope() -> Iterator[None]:
    """Within this block a probe started by ``start_probe`` waits for the gate; one left
    unused (the run skipped, failed or was rejected earlier) is stopped at the end."""
    started: list[ProbeProcess] = []
    token = _AHEAD.set(started)
    try:
        yield
    finally:
        _AHEAD.reset(token)
        for probe in started:
            probe.close()


def start_probe(params: Params) -> None:
    """Start the gate's fresh process now, importing the estimator's package, if the gate will
    need one; a no-op outside ``probe_scope``."""
    started = _AHEAD.get()
    if started is None or started:
        return
    try:
        rule = params.gates.rule("predict_memory")
    except KeyError:
        return
    assert isinstance(rule, PredictMemoryParams)
    if not (rule.enabled and rule.isolated and rule.max_peak_bytes is not None):
        return
    package = params.train.estimator.split(".")[0]
    started.append(ProbeProcess(["pandas", "sklearn.pipeline", "tasks.encoders", package]))


def isolated_peak(model: Any, batch: pd.DataFrame, task: str, timeout: float) -> dict[str, float]:
    """Measure in a fresh interpreter (the one started ahead, if any); raise RuntimeError with
    its stderr on failure."""
    import cloudpickle

    ahead = _AHEAD.get()
    probe = ahead.pop() if ahead else ProbeProcess([])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_path, batch_path = Path(tmp, "model.pkl"), Path(tmp, "batch.pkl")
            model_path.write_bytes(cloudpickle.dumps(model))
            batch.to_pickle(batch_path)
            out = probe.measure(model_path, batch_path, task, timeout)
    finally:
        probe.close()
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def measure_peak(
    model: Any, batch: pd.DataFrame, task: str, isolated: bool, timeout: float
) -> tuple[float, str]:
    """(peak bytes, what was measured) for one call; cached per model and batch."""
    key = (len(batch), f"{task}-{isolated}")
    try:
        cached = _measured.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        cached = {}
    if key in cached:
        return cached[key]
    how = ""
    if isolated:
        try:
            m = isolated_peak(model, batch, task, timeout)
            how = (
                f"fresh process: resident-set growth {m['rss_growth'] / 1e6:.2f} MB "
                f"(native included), Python allocations {m['python_peak'] / 1e6:.2f} MB"
            )
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            how = (
                f"in this process, Python and NumPy allocations only (fresh process failed: {exc})"
            )
    if not how.startswith("fresh"):
        from tasks.gates.memory_probe import probe

        m = probe(model, batch, task)
        how = how or (
            f"in this process: resident-set growth {m['rss_growth'] / 1e6:.2f} MB (misses "
            f"memory the allocator reuses), Python allocations {m['python_peak'] / 1e6:.2f} MB"
        )
    cached[key] = (max(m["rss_growth"], m["python_peak"]), how)
    return cached[key]


class PredictMemoryGate(BaseGate):
    name = "predict_memory"
    Params = PredictMemoryParams
    order = 55
    measures_machine = True

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule = self.params
        assert isinstance(rule, PredictMemoryParams)
        if rule.max_peak_bytes is None:
            return [self.result("skipped", "no budget for the peak memory of a prediction")]
        latency_rows: int = getattr(evidence.policy.rule("latency"), "batch_size", 1000)
        rows = rule.batch_rows or latency_rows
        batch = evidence.batch(rows)
        peak, how = measure_peak(
            evidence.candidate, batch, evidence.task, rule.isolated, rule.timeout_seconds
        )
        status: Status = "passed" if peak <= rule.max_peak_bytes else "failed"
        reason = (
            f"peak of one {len(batch)}-row call: {peak / 1e6:.2f} MB, budget "
            f"{rule.max_peak_bytes / 1e6:.2f} MB ({how})"
        )
        return [self.result(status, reason, "bytes", peak, threshold=float(rule.max_peak_bytes))]

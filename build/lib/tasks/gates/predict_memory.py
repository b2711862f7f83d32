"""Gate `predict_memory`: peak memory of one prediction call within a budget.

Measured in a fresh process (``tasks.gates.memory_probe``): the larger of the resident-set
growth (native memory included) and the peak of Python allocations during one call on the
latency batch. If the model cannot be loaded in a fresh process, it is measured in this one
and the reason says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    import pandas as pd

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


def isolated_peak(model: Any, batch: pd.DataFrame, task: str, timeout: float) -> dict[str, float]:
    """Run the probe in a fresh interpreter; raise RuntimeError with its stderr on failure."""
    import cloudpickle

    with tempfile.TemporaryDirectory() as tmp:
        model_path, batch_path = Path(tmp, "model.pkl"), Path(tmp, "batch.pkl")
        model_path.write_bytes(cloudpickle.dumps(model))
        batch.to_pickle(batch_path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tasks.gates.memory_probe",
                str(model_path),
                str(batch_path),
                task,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "no output")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
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

"""Timing prediction calls on a busy machine, for the `latency` gate.

Each call is timed by the wall clock less the time its thread spent runnable but waiting for a
CPU (Linux's ``/proc/thread-self/schedstat``, the scheduler's run-queue wait): what other
processes take from us is not the model's cost, while everything the call does itself —
computing, sleeping, waiting on I/O or its own worker threads — still counts. Where the system
reports no such wait the wall clock is used, and the result says so.

The models take turns call by call (ABBA order), so both see the same machine at the same
moment, and the calls are kept as pairs: the ratio of the two models is the median of the
per-pair ratios, which a spell of noise in a few pairs does not move.

This module only measures in-process calls; what is measured (``calls``) is the caller's, so
a measurement of another path (the served app) can replace it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def run_queue_wait() -> float | None:
    """Seconds this thread has waited for a CPU since it started; None where not reported."""
    try:
        fields = SCHEDSTAT.read_text().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Timings:
    """Seconds per call of each model, call i of every model measured at the same moment."""

    samples: tuple[tuple[float, ...], ...]  # one tuple per model, in the order given
    clock: str  # how a call was timed, for the gate's reason

    def __add__(self, other: Timings) -> Timings:
        joined = tuple(a + b for a, b in zip(self.samples, other.samples, strict=True))
        clock = self.clock if self.clock == other.clock else "wall clock"
        return Timings(joined, clock)

    def quantile(self, model: int, q: float) -> float:
        return float(np.percentile(self.samples[model], q))

    def paired_ratio(self, model: int, baseline: int) -> float:
        """The median of ``model``'s time over ``baseline``'s, call by call."""
        pairs = zip(self.samples[model], self.samples[baseline], strict=True)
        return float(statistics.median(a / b if b > 0 else float("inf") for a, b in pairs))


def time_calls(
    calls: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
    waited: Callable[[], float | None] = run_queue_wait,
) -> Timings:
    """Each of ``calls`` ``repeats`` times, interleaved after ``warmup`` rounds."""
    for _ in range(warmup):
        for call in calls:
            call()
    removed = waited() is not None
    samples: list[list[float]] = [[] for _ in calls]
    for i in range(repeats):
        order = range(len(calls)) if i % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            wait_before = waited() if removed else None
            started = clock()
            calls[k]()
            elapsed = clock() - started
            if wait_before is not None:
                wait_after = waited()
                if wait_after is not None:
                    elapsed = max(elapsed - (wait_after - wait_before), 0.0)
            samples[k].append(elapsed)
    how = "wall clock less the time spent waiting for a CPU" if removed else "wall clock"
    return Timings(tuple(tuple(s) for s in samples), how)

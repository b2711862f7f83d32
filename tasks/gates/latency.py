"""Gate `latency`: the time of one prediction call, against a budget and against the champion.

Measured so that a busy machine does not decide (:mod:`tasks.gates.timing`): both models take
turns call by call, a call's time leaves out what it spent waiting for a CPU, and the champion
is compared by the median of the per-call ratios. A verdict that fails is measured once more and
decided on both rounds together: more evidence, never an error.

- ``max_p95_ms``: the candidate's p95 may not exceed it — unless the champion is over it too and
  the candidate is not slower: keeping the slower model in production is no remedy. Set it for
  the hardware that serves (null: no budget).
- ``max_ratio``: the candidate may not be more than this many times the champion's time, judged
  only when it is more than ``min_slowdown_ms`` slower (a few milliseconds are not what a
  serving budget is about).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.gates.evidence import predict
from tasks.gates.timing import Timings, time_calls
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class LatencyParams(GateRule):
    batch_size: int = Field(1000, ge=1)
    repeats: int = Field(30, ge=5)
    warmup: int = Field(3, ge=0)
    max_p95_ms: float | None = Field(250.0, gt=0)
    max_ratio: float | None = Field(1.5, gt=0)
    min_slowdown_ms: float = Field(10.0, ge=0)


@dataclass(frozen=True)
class Verdict:
    """What the timings say: the candidate's p95, the champion's, the problems, the words."""

    candidate_p95_ms: float
    champion_p95_ms: float | None
    problems: tuple[str, ...]
    reason: str


def _ms(value: float) -> str:
    """Milliseconds as people read them: 93.0, 4.1, 0.052."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"


def judge(timings: Timings, rule: LatencyParams, rows: int) -> Verdict:
    """The verdict on ``timings`` (model 0 the candidate, model 1 the champion if any)."""
    c95, c50 = 1000 * timings.quantile(0, 95), 1000 * timings.quantile(0, 50)
    words = [f"p95 {_ms(c95)} ms per call on {rows} rows (median {_ms(c50)} ms)"]
    problems: list[str] = []
    h95: float | None = None
    slower = True  # than the champion; with none, the budget alone decides
    if len(timings.samples) > 1:
        h95, h50 = 1000 * timings.quantile(1, 95), 1000 * timings.quantile(1, 50)
        ratio, diff = timings.paired_ratio(0, 1), c50 - h50
        words.append(f"champion p95 {_ms(h95)} ms (median {_ms(h50)} ms)")
        slower = ratio > 1 and diff > rule.min_slowdown_ms
        if ratio <= 1:
            words.append(f"{ratio:.2f}x the champion's time: faster, by {_ms(-diff)} ms")
        elif not slower:
            words.append(
                f"{ratio:.2f}x the champion's time but {_ms(diff)} ms slower: not judged under "
                f"{rule.min_slowdown_ms:g} ms"
            )
        elif rule.max_ratio is not None and ratio > rule.max_ratio:
            problems.append(
                f"{ratio:.2f}x the champion's time ({_ms(diff)} ms slower), above {rule.max_ratio}x"
            )
        elif rule.max_ratio is not None:
            words.append(f"{ratio:.2f}x the champion's time, within {rule.max_ratio}x")
    budget = rule.max_p95_ms
    if budget is not None and c95 > budget:
        if h95 is not None and h95 > budget and not slower:
            words.append(
                f"over the {budget:g} ms budget, as the champion is, and not slower than it: "
                "promoting it does not make serving slower"
            )
        else:
            problems.append(f"p95 {_ms(c95)} ms over the {budget:g} ms budget")
    elif budget is not None:
        words.append(f"within the {budget:g} ms budget")
    calls = len(timings.samples[0])
    words.append(f"{calls} interleaved calls each, timed by the {timings.clock}")
    return Verdict(c95, h95, tuple(problems), "; ".join([*problems, *words]))


class LatencyGate(BaseGate):
    name = "latency"
    Params = LatencyParams
    order = 40
    measures_machine = True

    def measure(self, evidence: Evidence) -> tuple[Timings, int]:
        """The timings of the candidate's (and the champion's) prediction calls, in process."""
        rule = self.params
        assert isinstance(rule, LatencyParams)
        batch = evidence.batch(rule.batch_size)
        models = [evidence.candidate]
        if evidence.champion is not None:
            models.append(evidence.champion)
        calls = [functools.partial(predict, m, batch, evidence.task) for m in models]
        return time_calls(calls, rule.repeats, rule.warmup), len(batch)

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule = self.params
        assert isinstance(rule, LatencyParams)
        timings, rows = self.measure(evidence)
        verdict = judge(timings, rule, rows)
        if verdict.problems:  # near a bound: decide on twice the calls
            more, _ = self.measure(evidence)
            verdict = judge(timings + more, rule, rows)
        status: Status = "failed" if verdict.problems else "passed"
        return [
            self.result(
                status,
                verdict.reason,
                "p95_ms",
                verdict.candidate_p95_ms,
                verdict.champion_p95_ms,
                rule.max_p95_ms,
            )
        ]

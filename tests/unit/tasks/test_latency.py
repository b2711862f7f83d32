"""The latency gate's measurement and verdict: noise from other processes does not decide,
and the reason says what was measured in the right words."""

from __future__ import annotations

import pytest

from tasks.gates.latency import LatencyParams, judge
from tasks.gates.timing import Timings, time_calls


class BusyMachine:
    """A fake clock on which every other call of a model is preempted: another process holds
    the CPU for 50 ms, and the scheduler counts that time as this thread's run-queue wait."""

    def __init__(self, cost: float, reports_wait: bool = True) -> None:
        self.now, self.waited, self.calls = 0.0, 0.0, 0
        self.cost, self.reports_wait = cost, reports_wait

    def clock(self) -> float:
        return self.now

    def wait(self) -> float | None:
        return self.waited if self.reports_wait else None

    def call(self) -> None:
        self.calls += 1
        if self.calls % 2:
            self.now += 0.050
            self.waited += 0.050
        self.now += self.cost


def test_the_time_a_call_waits_for_a_cpu_is_not_the_models():
    machine = BusyMachine(0.002)
    timings = time_calls([machine.call], 10, 2, machine.clock, machine.wait)
    assert timings.samples[0] == pytest.approx([0.002] * 10)
    assert "waiting for a CPU" in timings.clock


def test_without_scheduler_waits_the_wall_clock_is_used_and_said():
    machine = BusyMachine(0.002, reports_wait=False)
    timings = time_calls([machine.call], 10, 0, machine.clock, machine.wait)
    assert max(timings.samples[0]) == pytest.approx(0.052)
    assert timings.clock == "wall clock"


def test_models_take_turns_call_by_call():
    seen: list[str] = []
    time_calls([lambda: seen.append("c"), lambda: seen.append("h")], 4, 1)
    assert seen == ["c", "h", "c", "h", "h", "c", "c", "h", "h", "c"]


def test_the_ratio_is_the_median_of_paired_calls_which_a_noisy_spell_does_not_move():
    candidate = [0.010] * 6 + [0.090] * 4  # four calls disturbed
    timings = Timings((tuple(candidate), (0.010,) * 10), "wall clock")
    assert timings.paired_ratio(0, 1) == pytest.approx(1.0)


RULE = LatencyParams(max_p95_ms=250, max_ratio=1.5, min_slowdown_ms=10)


def _timings(candidate_ms: float, champion_ms: float | None) -> Timings:
    samples = [(candidate_ms / 1000,) * 30]
    if champion_ms is not None:
        samples.append((champion_ms / 1000,) * 30)
    return Timings(tuple(samples), "wall clock less the time spent waiting for a CPU")


def test_a_faster_candidate_is_called_faster():
    verdict = judge(_timings(227, 320), RULE, 1000)
    assert not verdict.problems
    assert "0.71x the champion's time: faster, by 93.0 ms" in verdict.reason
    assert "not judged" not in verdict.reason


def test_over_the_budget_like_a_slower_champion_is_no_rejection():
    """The regression case of the issue: a better model, faster than the champion, both over
    an absolute budget the hardware cannot meet; keeping the champion makes nothing faster."""
    verdict = judge(_timings(260, 350), RULE, 1000)
    assert not verdict.problems, verdict.reason
    assert "as the champion is, and not slower" in verdict.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "words"),
    [
        (260, None, "p95 260.0 ms over the 250 ms budget"),
        (260, 200, "p95 260.0 ms over the 250 ms budget"),
        (200, 100, "2.00x the champion's time (100.0 ms slower), above 1.5x"),
    ],
)
def test_a_slower_candidate_is_rejected_naming_why(candidate, champion, words):
    verdict = judge(_timings(candidate, champion), RULE, 1000)
    assert words in verdict.problems


def test_a_few_milliseconds_slower_are_not_judged_by_the_ratio():
    verdict = judge(_timings(6, 2), RULE, 200)
    assert not verdict.problems
    assert "3.00x the champion's time but 4.0 ms slower: not judged under 10 ms" in verdict.reason

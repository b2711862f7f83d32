"""Which earlier decisions `--redecide` may decide again: rejections by machine gates only."""

from __future__ import annotations

import pytest

from tasks.decisions import RedecideRefused, machine_gates, redecision
from tasks.errors import ErrorKind, kind_of
from tasks.train import PreviousRun


def test_the_gates_that_measure_the_machine():
    assert machine_gates() == {"latency", "predict_memory"}


@pytest.mark.parametrize("failed", [("latency",), ("latency", "predict_memory")])
def test_a_rejection_by_machine_gates_alone_may_be_decided_again(failed):
    note = redecision(PreviousRun("r1", "reject", None, "3", failed), "oncall@ci")
    assert note.startswith("re-decided at the request of oncall@ci: run r1")
    assert ", ".join(failed) in note


@pytest.mark.parametrize(
    ("previous", "words"),
    [
        (PreviousRun("r1", "promote", "4", "3", ()), "nothing to re-decide"),
        (PreviousRun("r1", "reject", None, "3", ("latency", "no_regression")), "no_regression"),
        (PreviousRun("r1", "reject", None, "3", ("minimums",)), "judge the model"),
        (PreviousRun("r1", "reject", None, "3", None), "--force"),
    ],
)
def test_any_other_decision_is_refused_saying_why(previous, words):
    with pytest.raises(RedecideRefused, match=words) as err:
        redecision(previous, "oncall@ci")
    assert kind_of(err.value) is ErrorKind.BAD_INPUT

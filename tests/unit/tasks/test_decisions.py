"""Remembered decisions: which earlier decision still holds against today's champion."""

import pytest

from tasks.decisions import still_decided
from tasks.train import PreviousRun


@pytest.mark.parametrize(
    ("decision", "compared_with", "champion_now", "holds"),
    [
        ("reject", "2", "2", True),
        ("reject", "2", "1", False),  # rolled back since: decide again
        ("reject", "2", "3", False),  # another promotion since: decide again
        ("reject", "none", None, True),
        ("reject", None, "2", False),  # recorded before the champion was: decide again
        ("promote", "1", "5", True),
        ("rolled-back", "1", "1", True),  # the rollback is the decision until forced
    ],
)
def test_a_decision_holds_for_the_champion_it_was_made_against(
    decision, compared_with, champion_now, holds
):
    previous = PreviousRun("run", decision, None, compared_with)
    assert still_decided(previous, champion_now) is holds

import pytest

from tasks.ledger import deciding_gate
from tasks.notify import RunOutcome, build_message


@pytest.mark.parametrize(
    ("outcome", "gate"),
    [
        (RunOutcome("rejected", "m", failed_gates=("latency: p95 300 ms",)), "latency: p95 300 ms"),
        (RunOutcome("failed", "m", step="validate", error="DataValidationError"), "step validate"),
        (
            RunOutcome("promoted", "m", metric="roc_auc", candidate=0.81, champion=0.8),
            "all gates passed (roc_auc 0.8100 vs 0.8000)",
        ),
        (RunOutcome("skipped", "m"), "same data, params and code already decided"),
    ],
)
def test_the_deciding_gate_is_named(outcome, gate):
    assert deciding_gate(outcome) == gate


def test_a_frozen_outcome_says_so_and_who_froze_it():
    outcome = RunOutcome(
        "frozen", "churn", "a" * 32, error="promotions frozen by oncall since t: incident 42"
    )
    message = build_message(outcome)
    assert "promotions are frozen" in message.text
    assert "incident 42" in str(message.blocks)

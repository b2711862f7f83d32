"""Decisions: recording one (the ledger first, then the team told), whether an earlier
decision on the same data, params and code still holds now, and whether an operator may have
it decided again (``ctflows run --redecide``)."""

from __future__ import annotations

from dataclasses import replace

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.champion import current_champion_version
from tasks.config import Params
from tasks.errors import CtflowsError, ErrorKind
from tasks.gates.registry import builtin_gates
from tasks.ledger import record_outcome
from tasks.notify import notify
from tasks.outcome import RunOutcome
from tasks.train import PreviousRun, find_previous_run


def decide(outcome: RunOutcome, params: Params) -> None:
    """Make ``outcome`` part of the model's history, then tell the team.

    The ledger is written as part of the decision, whatever happens to the notification; and
    neither a ledger nor a notification that fails raises: what was decided (an alias moved, a
    cluster rolled out) stands and the run or command ends as it should.
    """
    record_outcome(outcome, params)
    notify(outcome, params)


def still_decided(previous: PreviousRun, champion: str | None) -> bool:
    """Whether an earlier completed run on the same data, params and code still decides now.

    A promotion (kept or rolled back) holds until someone forces a retrain; a rejection
    holds only against the champion it was compared with.
    """
    if previous.decision == "reject":
        return previous.champion == (champion or "none")
    return True


@task(name="find-previous-run", cache_policy=NONE)  # the name bench/run.py times
def find_decision(
    experiment_id: str, lineage: dict[str, str], params: Params
) -> PreviousRun | None:
    """The earlier decision on this data, params and code that still holds, if any."""
    previous = find_previous_run(
        experiment_id, lineage["ct.data_md5"], lineage["ct.params_hash"], lineage["ct.git_commit"]
    )
    if previous is None:
        return None
    champion = current_champion_version(params.registry.model_name, params.registry.alias)
    if still_decided(previous, champion):
        return previous
    get_run_logger().info(
        "run %s rejected this data against champion v%s; the champion is now v%s: deciding again",
        previous.run_id,
        previous.champion,
        champion or "(none)",
    )
    return None


class RedecideRefused(CtflowsError, ValueError):
    """``--redecide`` asked for a decision that was not a rejection by machine-measuring gates
    alone; the message says what the earlier run decided and what to do instead."""

    kind = ErrorKind.BAD_INPUT


def machine_gates() -> frozenset[str]:
    """The built-in gates that measure the machine the run is on rather than the model."""
    return frozenset(n for n, g in builtin_gates().items() if g.measures_machine)


def redecision(previous: PreviousRun, actor: str) -> str:
    """The note recorded with a re-decision of ``previous`` asked by ``actor``; RedecideRefused
    unless ``previous`` is a rejection by gates that measure the machine, and nothing else."""
    machine = machine_gates()
    allowed = ", ".join(sorted(machine))
    if previous.decision != "reject":
        raise RedecideRefused(
            f"run {previous.run_id} decided {previous.decision!r} on this data, params and "
            f"code: nothing to re-decide (--redecide re-decides a rejection by {allowed})"
        )
    if previous.failed_gates is None:
        raise RedecideRefused(
            f"run {previous.run_id} rejected this data but does not record which gates did "
            "(it predates ct.failed_gates): retrain it with --force"
        )
    model_gates = sorted(set(previous.failed_gates) - machine)
    if model_gates or not previous.failed_gates:
        raise RedecideRefused(
            f"run {previous.run_id} was rejected by {', '.join(model_gates) or 'no gate'}, which "
            f"judge the model, not the machine: --redecide re-decides only rejections by "
            f"{allowed}; --force retrains and skips no_regression and significance"
        )
    return (
        f"re-decided at the request of {actor}: run {previous.run_id} had rejected this data on "
        f"{', '.join(previous.failed_gates)} (measured on the machine, not the model)"
    )


def mark_redecided(outcome: RunOutcome, note: str | None, actor: str | None) -> RunOutcome:
    """``outcome`` carrying the re-decision's note and who asked, for the history."""
    if note is None:
        return outcome
    return replace(outcome, redecided=note, actor=actor)

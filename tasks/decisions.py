"""Decisions: recording one (the ledger first, then the team told), and whether an earlier
decision on the same data, params and code still holds now."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.champion import current_champion_version
from tasks.config import Params
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

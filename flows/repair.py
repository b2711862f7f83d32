"""Flow `repair`: put right a promotion or rollback that a killed run left half-done.

A promotion journals what to restore before it moves the alias or patches the cluster
(tasks/journal.py). Every training and rollback run applies an open journal at its start; this
flow does it without waiting for one: `make serve` runs it before serving, and while serving
starts the deployment `repair/<model>` when it sees a stale journal (it looks every
``triggers.repair_seconds``, default 30 s: deployments/repair_watch.py); with a work pool, a
crashed run of the model starts it.

It holds the model's training slot while it works, so it never touches the journal of a live
promotion: if a run holds the slot, that run repaired at its own start and the flow stops.
One exception: when the flow run that wrote the open journal has ended (a served run killed
mid-deploy is marked Crashed by its runner), the journal is applied at once, without waiting
for the dead run's slot to free itself (its lease, tasks/train.py LEASE_SECONDS).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError

from tasks.config import load_params
from tasks.decisions import decide
from tasks.journal import journal_writer_ended, recover_interrupted
from tasks.notify import flow_run_link
from tasks.outcome import RunOutcome
from tasks.train import hold_training_lock, prepare_tracking, training_slot_taken

NOTHING = "nothing to repair"
BUSY = "a run holds the training slot (it repairs at its own start); nothing done"


@flow(name="repair")
def repair(params_file: str = "params.yaml", wait_seconds: float | None = None) -> str:
    """Apply an open crash journal of the model in ``params_file``; say what was done.

    Args:
        params_file: the params.yaml to use.
        wait_seconds: how long to wait for the training slot (`make serve` at its start
            waits out a killed run's lease). By default (the schedule) a slot taken now means
            a live run, and nothing is done.
    """
    logger = get_run_logger()
    params = load_params(params_file)
    if wait_seconds is None and training_slot_taken(params):
        prepare_tracking(params)
        ended = journal_writer_ended(params)
        if ended is None:
            logger.info(BUSY)  # looked first: a timed-out wait for the slot logs an ERROR
            return BUSY
        logger.warning("the run that left the journal ended %s: repairing now", ended)
        note = recover_interrupted(params)
    else:
        wait = (
            wait_seconds
            if wait_seconds is not None
            else max(1, params.triggers.repair_seconds - 10)
        )
        try:
            with hold_training_lock(params, wait_seconds=wait):
                prepare_tracking(params)
                note = recover_interrupted(params)
        except AcquireConcurrencySlotTimeoutError:
            logger.info(BUSY)
            return BUSY
    if not note:
        logger.info("%s: %s", params.registry.model_name, NOTHING)
        return NOTHING
    decide(
        RunOutcome("recovered", params.registry.model_name, error=note, flow_run=flow_run_link()),
        params,
    )
    return note


if __name__ == "__main__":
    repair()

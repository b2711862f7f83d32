"""The served process watches for half-done deploys, and starts flow `repair` only for one.

A promotion or rollback killed mid-deploy leaves its journal open (tasks/journal.py). Rather
than a `repair` flow run per model every ``triggers.repair_seconds`` whether or not there is
anything to repair (three models: 98 completed and 297 scheduled runs in 17 minutes, burying
the runs people look for), `deployments.serve` looks itself, from a thread, every
``repair_seconds``: one registry read per model (the journal tag), and, only when a journal is
open, the state of the run that wrote it and the training slot. A stale journal starts one run
of `repair/<model>` (none while one is scheduled or running); nothing to repair starts nothing.
A look that fails (MLflow or Prefect down) is logged and the next look tries again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

ACTIVE = ("SCHEDULED", "PENDING", "RUNNING")


@dataclass(frozen=True)
class Watched:
    model: str  # the model's name: its repair deployment is `repair/<model>`
    params_file: str


def stale_reason(params_file: str) -> str | None:
    """Why the model of ``params_file`` has a journal to repair now, or None."""
    from mlflow.tracking import MlflowClient

    from tasks.config import load_params
    from tasks.journal import stale_journal
    from tasks.services import bound_mlflow
    from tasks.train import tracking_uri

    params = load_params(params_file)
    bound_mlflow(params.timeouts)
    uri = tracking_uri(params)  # a client of its own: the process's MLflow URI is not touched
    return stale_journal(params, MlflowClient(tracking_uri=uri, registry_uri=uri))


def start_repair(deployment: str, params_file: str) -> str | None:
    """A flow run of ``deployment`` (`repair/<model>`), unless one is already scheduled or
    running; its id, or None when one was under way."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        active = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE])
                )
            ),
            limit=1,
        )
        if active:
            return None
        run = client.create_flow_run_from_deployment(
            found.id, parameters={"params_file": params_file}
        )
        return str(run.id)


class RepairWatch:
    """Every ``every`` seconds, for each watched model: ``check(params_file)`` says why its
    journal is stale (or None); only then ``start(deployment, params_file)`` starts a repair."""

    def __init__(
        self,
        models: Sequence[Watched],
        every: float,
        check: Callable[[str], str | None] = stale_reason,
        start: Callable[[str, str], str | None] = start_repair,
    ) -> None:
        self.models, self.every, self.check, self.start = tuple(models), every, check, start
        self._stop = threading.Event()

    def look(self) -> list[str]:
        """One look at every model; the flow runs started."""
        started = []
        for watched in self.models:
            deployment = f"repair/{watched.model}"
            try:
                reason = self.check(watched.params_file)
                if reason is None:
                    continue
                run = self.start(deployment, watched.params_file)
            except Exception as exc:  # the watch outlives an outage; the next look retries
                log.warning(
                    "repair watch: could not look at %s: %s: %s",
                    watched.model,
                    type(exc).__name__,
                    exc,
                )
                continue
            if run is None:
                log.info("repair watch: %s has a stale journal (%s); a repair is under way",
                         watched.model, reason)  # fmt: skip
            else:
                log.warning("repair watch: %s has a stale journal (%s): started %s run %s",
                            watched.model, reason, deployment, run)  # fmt: skip
                started.append(run)
        return started

    def run(self) -> None:
        while not self._stop.wait(self.every):
            self.look()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[RepairWatch]:
        thread = threading.Thread(target=self.run, name="repair-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=self.every + 30)

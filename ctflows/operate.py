"""The commands that change things: rollback, promote, freeze, unfreeze, run.

Rollback and promote run the `rollback` and `promote` flows in this process: the same tasks
as the flows (cluster first, then the alias, the journal, Slack), with who and why recorded.
`run` starts the model's manual deployment and follows it, or runs the flow here (--local).
Every refusal is checked before anything changes and raises ``Refused``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from ctflows.catalog import Model, deployment_name
from ctflows.status import use_tracking
from tasks.config import Params
from tasks.errors import CtflowsError, ErrorKind, kind_of
from tasks.ledger import (
    Freeze,
    clear_freeze,
    current_actor,
    promotion_problem,
    read_decisions,
    read_freeze,
    set_freeze,
)


class Refused(CtflowsError, ValueError):
    """The request cannot be carried out as asked; nothing was changed."""

    kind = ErrorKind.BAD_INPUT


class Unavailable(CtflowsError, RuntimeError):
    """A service the command needs did not answer, or is not configured."""

    kind = ErrorKind.UNAVAILABLE


def _outcome_dict(outcome: Any) -> dict[str, Any]:
    return asdict(outcome)


@contextlib.contextmanager
def classified(params: Params) -> Iterator[None]:
    """Failures of the services used inside, as what they are: an MLflow server that refused
    or did not answer is ServiceUnavailable (exit 3), whatever exception its client raised."""
    from tasks.services import ServiceUnavailable, outage_of

    try:
        yield
    except Exception as exc:
        if kind_of(exc) is ErrorKind.BAD_INPUT or isinstance(exc, ServiceUnavailable):
            raise
        outage = outage_of(exc, params)
        if outage is None or outage is exc:
            raise
        raise outage from exc


def canonical_version(version: str) -> str:
    """A version as the registry spells it: ``02`` and `` 2`` are version 2."""
    text = version.strip().removeprefix("v")
    return str(int(text)) if text.isdigit() else version


def rollback_target(model: Model, to: str | None) -> tuple[str | None, str]:
    """(current champion, version to go back to), or Refused saying why not."""
    from mlflow.tracking import MlflowClient

    from tasks.champion import current_champion_version

    params = model.params()
    use_tracking(params)
    name, alias = params.registry.model_name, params.registry.alias
    current = current_champion_version(name, alias)
    to = canonical_version(to) if to is not None else None
    if to is None:
        if current is None:
            raise Refused(f"{model.name} has no champion (@{alias}): nothing to roll back")
        to = MlflowClient().get_model_version(name, current).tags.get("ct.previous_champion")
        if not to:
            raise Refused(
                f"{model.name} v{current} replaced no earlier champion: nothing to roll back to; "
                "name a version with --to"
            )
    elif to == current:
        raise Refused(f"{model.name} v{to} already is the champion")
    problem = promotion_problem(params, to)
    if problem and "frozen" not in problem:  # a rollback is allowed during a freeze
        raise Refused(problem)
    return current, to


def rollback(model: Model, to: str | None, reason: str) -> dict[str, Any]:
    from flows.rollback import rollback as rollback_flow

    _, target = rollback_target(model, to)
    outcome = rollback_flow(
        version=target,
        params_file=str(model.params_file),
        reason=reason,
        actor=current_actor(),
    )
    return _outcome_dict(outcome)


def promote(model: Model, version: str, reason: str) -> dict[str, Any]:
    from flows.promote import promote as promote_flow
    from tasks.champion import current_champion_version

    params = model.params()
    use_tracking(params)
    version = canonical_version(version)
    if current_champion_version(params.registry.model_name, params.registry.alias) == version:
        raise Refused(f"{model.name} v{version} already is the champion: nothing to promote")
    problem = promotion_problem(params, version)
    if problem:
        raise Refused(problem)
    outcome = promote_flow(
        version=version, reason=reason, actor=current_actor(), params_file=str(model.params_file)
    )
    return _outcome_dict(outcome)


def freeze(model: Model, reason: str) -> dict[str, Any]:
    params = model.params()
    use_tracking(params)
    existing = read_freeze(params)
    if existing is not None:
        raise Refused(
            f"{model.name} is already frozen by {existing.actor} since {existing.at}: "
            f"{existing.reason}"
        )
    return asdict(set_freeze(params, reason, current_actor()))


def unfreeze(model: Model) -> dict[str, Any]:
    params = model.params()
    use_tracking(params)
    lifted: Freeze | None = clear_freeze(params)
    if lifted is None:
        raise Refused(f"{model.name} is not frozen")
    return asdict(lifted)


def redecide_actor(asked: bool) -> str | None:
    """Who asks for ``--redecide`` (the flow's ``redecide`` parameter), or None."""
    from tasks.ledger import current_actor

    return current_actor() if asked else None


def run_local(
    model: Model, rev: str | None, force: bool, dry_run: bool, redecide: str | None = None
) -> tuple[bool, Any]:
    """The flow in this process; (succeeded, outcome or error text)."""
    from flows.continuous_training import continuous_training
    from tasks.decisions import RedecideRefused

    state = continuous_training(
        rev=rev,
        force=force,
        dry_run=dry_run,
        params_file=str(model.params_file),
        redecide=redecide,
        return_state=True,
    )
    if state.is_completed():
        return True, _outcome_dict(state.result())
    try:
        state.result()
    except RedecideRefused:
        raise  # a refused request (exit 2), not a failed run
    except Exception as exc:  # the flow's own exception, re-raised by Prefect
        return False, exc
    return False, f"flow run ended {state.type.value}"


def run_deployment(
    model: Model,
    rev: str | None,
    force: bool,
    dry_run: bool,
    echo: bool,
    poll: float = 1.0,
    redecide: str | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Start ``continuous-training/<model>-manual`` and follow its logs until it ends."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise Unavailable(
            "no Prefect server configured (PREFECT_API_URL): start `make serve`, or use --local"
        )
    name = f"continuous-training/{deployment_name(model.name, 'manual')}"
    parameters: dict[str, Any] = {"force": force, "dry_run": dry_run}
    if redecide:
        parameters["redecide"] = redecide
    if rev:
        parameters["rev"] = rev
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound as exc:
            raise Unavailable(
                f"deployment {name} not found on {PREFECT_API_URL.value()}: "
                "is `make serve` running? (or use --local)"
            ) from exc
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        say = print if echo else (lambda *a, **k: None)
        say(f"started flow run {run.name} ({run.id}) of {name}", file=sys.stderr, flush=True)
    return follow_flow_run(model, str(run.id), echo, poll)


def follow_flow_run(
    model: Model, flow_run_id: str, echo: bool, poll: float = 1.0
) -> tuple[bool, dict[str, Any]]:
    """Print a flow run's logs until it ends; (completed, its state and the decision it
    recorded in the ledger)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    say = print if echo else (lambda *a, **k: None)
    with get_client(sync_client=True) as client:
        seen = 0
        waited_since = time.monotonic()
        warned = False
        while True:
            run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                sort=LogSort.TIMESTAMP_ASC,
                offset=seen,
            )
            for entry in logs:
                say(f"{entry.timestamp:%H:%M:%S} {entry.message}", file=sys.stderr, flush=True)
            seen += len(logs)
            state = run.state
            if state is not None and state.is_final():
                break
            if (
                state is not None
                and state.is_scheduled()
                and not warned
                and time.monotonic() - waited_since > 15
            ):
                say(
                    "still waiting for a runner to pick it up: is `make serve` running?",
                    file=sys.stderr,
                    flush=True,
                )
                warned = True
            time.sleep(poll)
    assert state is not None
    params = model.params()
    use_tracking(params)
    decision = next(
        (asdict(d) for d in read_decisions(params, 20) if d.flow_run and str(run.id) in d.flow_run),
        None,
    )
    result = {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": state.type.value,
        "message": state.message,
        "decision": decision,
    }
    return state.is_completed(), result

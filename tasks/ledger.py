"""The decision ledger and the promotion freeze, kept in the MLflow store next to the models.

Every outcome a flow or an operator reaches (promoted, rejected, skipped, failed, frozen,
rolled back, recovered) is one MLflow run in the experiment ``<mlflow.experiment>-decisions``,
tagged with the model, the version, the gate that decided, who and why: `ctflows history`
reads it back. A freeze is a tag on the registered model, so every process (served runs, the
command line, another machine) sees the same one.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import Params
from tasks.errors import CtflowsError, ErrorKind
from tasks.services import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from tasks.outcome import RunOutcome

log = logging.getLogger(__name__)

FREEZE_TAG = "ct.frozen"
KINDS_RECORDED = {
    "promoted",
    "rejected",
    "failed",
    "skipped",
    "frozen",
    "rolled-back",
    "recovered",
    "dry-run",
}


@dataclass(frozen=True)
class Decision:
    """One line of a model's history."""

    at: str
    kind: str
    model_name: str
    version: str | None
    previous_version: str | None
    data_md5: str
    gate: str
    detail: str
    actor: str
    run_id: str | None
    flow_run: str | None


@dataclass(frozen=True)
class Freeze:
    reason: str
    actor: str
    at: str


def current_actor() -> str:
    """Who acts: $CTFLOWS_ACTOR (set it in CI), else user@host."""
    if os.environ.get("CTFLOWS_ACTOR"):
        return os.environ["CTFLOWS_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _client(params: Params) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    from tasks.train import tracking_uri

    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        params.state_dir.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, params: Params, create: bool) -> str | None:
    name = f"{params.mlflow.experiment}-decisions"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    if not create:
        return None
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI") and not params.mlflow.tracking_uri:
        location = (params.state_dir / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def deciding_gate(outcome: RunOutcome) -> str:
    """What decided, in a few words: the failed gates, the step that failed, or the gates."""
    if outcome.failed_gates:
        return "; ".join(outcome.failed_gates)
    if outcome.kind == "failed":
        return f"step {outcome.step}"
    if outcome.kind in {"promoted", "dry-run"} and outcome.candidate is not None:
        champ = "none" if outcome.champion is None else f"{outcome.champion:.4f}"
        return f"all gates passed ({outcome.metric} {outcome.candidate:.4f} vs {champ})"
    if outcome.kind == "skipped":
        return "same data, params and code already decided"
    return ""


def record_decision(outcome: RunOutcome, params: Params, actor: str | None = None) -> None:
    """Append ``outcome`` to the model's history."""
    client = _client(params)
    experiment_id = _experiment_id(client, params, create=True)
    assert experiment_id is not None
    tags = {
        "ct.model": outcome.model_name,
        "ct.kind": outcome.kind,
        "ct.version": outcome.version or "",
        "ct.previous_version": outcome.previous_version or "",
        "ct.data_md5": outcome.data_md5,
        "ct.gate": deciding_gate(outcome)[:4000],
        "ct.detail": (outcome.error or outcome.redecided or "")[:4000],
        "ct.actor": actor or outcome.actor or "flow",
        "ct.training_run": outcome.run_id or "",
        "ct.flow_run": outcome.flow_run or "",
    }
    name = f"{outcome.kind} {outcome.model_name}" + (
        f" v{outcome.version}" if outcome.version else ""
    )
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    client.set_terminated(run.info.run_id)


def should_record(outcome: RunOutcome) -> bool:
    """Whether ``outcome`` is a decision of the model's history (not drift notes, and not a
    failed setup, which had no store to write to)."""
    return outcome.kind in KINDS_RECORDED and not (
        outcome.kind == "failed" and outcome.step == "setup"
    )


@task(name="record-decision", cache_policy=NONE)
def record_outcome(outcome: RunOutcome, params: Params) -> bool:
    """Write ``outcome`` to the model's history as part of the decision, before anyone is told.

    A ledger that cannot be written does not undo what was decided (the alias and the cluster
    already moved): it is logged as an error naming the decision, and False is returned.
    """
    if not should_record(outcome):
        return False
    try:
        record_decision(outcome, params)
    except Exception as exc:  # MLflow's client raises many kinds; the decision stands
        get_run_logger().error(
            "the decision %s %s v%s was made but could not be written to the ledger "
            "(`ctflows history`): %s",
            outcome.kind,
            outcome.model_name,
            outcome.version or "-",
            redact(f"{type(exc).__name__}: {exc}"),
        )
        return False
    return True


def read_decisions(params: Params, limit: int = 20) -> list[Decision]:
    """The model's decisions, newest first."""
    client = _client(params)
    experiment_id = _experiment_id(client, params, create=False)
    if experiment_id is None:
        return []
    name = params.registry.model_name.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`ct.model` = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    out = []
    for run in runs:
        t = run.data.tags
        out.append(
            Decision(
                at=datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                kind=t.get("ct.kind", "?"),
                model_name=t.get("ct.model", ""),
                version=t.get("ct.version") or None,
                previous_version=t.get("ct.previous_version") or None,
                data_md5=t.get("ct.data_md5", ""),
                gate=t.get("ct.gate", ""),
                detail=t.get("ct.detail", ""),
                actor=t.get("ct.actor", ""),
                run_id=t.get("ct.training_run") or None,
                flow_run=t.get("ct.flow_run") or None,
            )
        )
    return out


def read_freeze(params: Params) -> Freeze | None:
    from mlflow.exceptions import MlflowException

    try:
        tags = _client(params).get_registered_model(params.registry.model_name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    raw = tags.get(FREEZE_TAG)
    if not raw:
        return None
    entry: dict[str, Any] = json.loads(raw)
    return Freeze(entry.get("reason", ""), entry.get("actor", ""), entry.get("at", ""))


def set_freeze(params: Params, reason: str, actor: str) -> Freeze:
    """Stop promotions of the model until `unfreeze`; the registered model is created if new."""
    from mlflow.exceptions import MlflowException

    client = _client(params)
    name = params.registry.model_name
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    freeze = Freeze(reason, actor, datetime.now(UTC).isoformat(timespec="seconds"))
    entry = {"reason": reason, "actor": actor, "at": freeze.at}
    client.set_registered_model_tag(name, FREEZE_TAG, json.dumps(entry))
    return freeze


def clear_freeze(params: Params) -> Freeze | None:
    """Lift the freeze; returns the one lifted, None if there was none."""
    freeze = read_freeze(params)
    if freeze is not None:
        _client(params).delete_registered_model_tag(params.registry.model_name, FREEZE_TAG)
    return freeze


@task(name="check-freeze", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def check_freeze(params: Params) -> Freeze | None:
    """Right before promotion: is the model frozen (`ctflows freeze`)?"""
    freeze = read_freeze(params)
    if freeze is not None:
        get_run_logger().warning(
            "promotions of %s are frozen by %s since %s: %s",
            params.registry.model_name,
            freeze.actor,
            freeze.at,
            freeze.reason,
        )
    return freeze


class NotPromotable(CtflowsError, ValueError):
    """A version an operator asked to promote that must not be: the message says why."""

    kind = ErrorKind.BAD_INPUT


def registered_versions(params: Params) -> list[str]:
    client = _client(params)
    name = params.registry.model_name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((str(mv.version) for mv in found), key=int)


def promotion_problem(params: Params, version: str) -> str | None:
    """Why ``version`` may not be promoted by hand, or None: it must exist, must have passed
    its gates in a real (not dry) run, and promotions must not be frozen."""
    from mlflow.exceptions import MlflowException

    client = _client(params)
    name = params.registry.model_name
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            raise
        known = ", ".join(registered_versions(params)) or "none yet"
        return f"{name} has no version {version!r} (registered versions: {known})"
    tags = client.get_run(str(mv.run_id)).data.tags if mv.run_id else {}
    if tags.get("ct.decision") != "promote" or tags.get("ct.dry_run") == "true":
        decided = tags.get("ct.decision", "never gated")
        return (
            f"{name} v{version} was never validated by ctflows' gates (run {mv.run_id}: "
            f"{decided}); only a version that passed them can be promoted"
        )
    freeze = read_freeze(params)
    if freeze is not None:
        return (
            f"promotions of {name} are frozen by {freeze.actor} since {freeze.at} "
            f"({freeze.reason}); `ctflows unfreeze` first"
        )
    return None


@task(name="check-promotable", cache_policy=NONE)
def check_promotable(params: Params, version: str) -> None:
    problem = promotion_problem(params, version)
    if problem:
        raise NotPromotable(problem)

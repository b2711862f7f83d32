"""`ctflows status` and `ctflows history`: what a model's state is, read from where it lives.

The champion and its lineage from the MLflow registry, what the cluster runs from the
Kubernetes API (or the dry-run record), the crash journal and the freeze from the registered
model's tags, the decisions from the ledger, the next scheduled run from the Prefect API.
Every source is read on its own: one that does not answer is reported, the others still show.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ctflows.catalog import Model, deployment_name
from tasks.config import Params
from tasks.ledger import Decision, read_decisions, read_freeze
from tasks.services import redact


@dataclass
class Status:
    model: str
    registry_name: str
    params_file: str
    champion: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    journal: dict[str, Any] | None = None
    frozen: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    next_run: dict[str, Any] | None = None
    links: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # source -> why it was not read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _NoStore(Exception):
    pass


def use_tracking(params: Params) -> str:
    """Point MLflow's fluent API at the model's store (read-only: nothing is created)."""
    import mlflow

    from tasks.services import bound_mlflow
    from tasks.train import tracking_uri

    bound_mlflow(params.timeouts)  # a team server that does not answer fails in seconds
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    return uri


def store_exists(uri: str) -> bool:
    """False for an embedded SQLite store no run has created yet (reading would create it)."""
    if not uri.startswith("sqlite:///"):
        return True
    return Path(uri.removeprefix("sqlite:///")).exists()


def _why(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")


def champion_facts(params: Params, decisions: list[Decision]) -> dict[str, Any] | None:
    from mlflow.tracking import MlflowClient

    from tasks.champion import current_champion_version

    name, alias = params.registry.model_name, params.registry.alias
    version = current_champion_version(name, alias)
    if version is None:
        return None
    mv = MlflowClient().get_model_version(name, version)
    facts: dict[str, Any] = {
        "version": version,
        "run_id": mv.run_id,
        "data_md5": mv.tags.get("ct.data_md5", ""),
        "registered_at": _iso(mv.creation_timestamp),
        "image": {k: v for k, v in mv.tags.items() if "image" in k or "digest" in k},
    }
    why = next(
        (d for d in decisions if d.kind in {"promoted", "rolled-back"} and d.version == version),
        None,
    )
    if why is not None:
        facts.update(
            promoted_at=why.at,
            promoted_by=why.actor,
            how=why.kind,
            why=why.detail or why.gate,
        )
    return facts


def _iso(millis: int | None) -> str | None:
    from datetime import UTC, datetime

    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def cluster_facts(params: Params, champion: dict[str, Any] | None) -> dict[str, Any]:
    """What the Deployment runs, and whether it is the champion."""
    from tasks.cluster import ANNOTATION_PREFIX, Cluster
    from tasks.deploy import resolve_mode

    deploy = params.deploy
    where = f"{deploy.namespace}/{deploy.deployment}"
    if resolve_mode(deploy) == "dry-run":
        record = params.state_dir / "deploy" / "dry-run.jsonl"
        last = None
        if record.exists():
            for line in record.read_text().splitlines():
                entry = json.loads(line)
                if deploy.deployment in entry.get("deployments", []):
                    last = entry
        return {
            "mode": "dry-run",
            "deployment": where,
            "image": last["image"] if last else None,
            "model_version": None,
            "matches_champion": None,
            "note": "no cluster configured: nothing runs; last recorded patch shown",
        }
    current = Cluster(deploy).current(deploy.deployment)
    running = current.annotations.get(f"{ANNOTATION_PREFIX}model-version")
    matches = None
    if champion is not None:
        matches = running == champion["version"]
        digests = [v for v in champion["image"].values() if v.startswith("sha256:")]
        if digests:
            matches = matches and any(d in current.image for d in digests)
    return {
        "mode": "cluster",
        "deployment": where,
        "image": current.image,
        "model_version": running,
        "matches_champion": matches,
    }


def journal_facts(params: Params, prefect_known: bool = False) -> dict[str, Any] | None:
    """The open journal, and whether the run that wrote it is still at work: a live run's
    journal is its change in progress, not something to repair."""
    from tasks.journal import ENDED, read_journal, writer_alive, writer_state

    entry = read_journal(params.registry.model_name)
    if entry is None:
        return None
    run_state = None
    if prefect_known:
        try:
            run_state = writer_state(entry)
        except Exception as exc:  # the Prefect part is reported on its own; judge by the pid
            logging.getLogger(__name__).info("writer of the journal not read: %s", _why(exc))
    alive = writer_alive(entry)
    pid, host = entry.get("pid"), entry.get("host")
    writer = f"flow run {entry.get('flow_run') or '-'}, pid {pid} on {host}"
    if run_state in ENDED or alive is False:
        state, note = (
            "interrupted",
            f"a promotion or rollback died half-way ({writer}"
            f"{', ' + run_state if run_state else ', gone'}): the next run repairs it, "
            "or `ctflows rollback` does now",
        )
    elif alive or run_state is not None:
        state, note = (
            "in-progress",
            f"a run is making this change now ({writer}, {run_state or 'running'}): nothing "
            "to repair; it closes the journal when it is done",
        )
    else:
        state, note = (
            "unknown",
            f"a change in progress, or one that died half-way ({writer}: not known here): the "
            "next run repairs it once the training slot is free",
        )
    return {
        "version": entry.get("version"),
        "previous_version": entry.get("previous_version"),
        "deployments": sorted(entry.get("templates", {})),
        "state": state,
        "writer": writer,
        "note": note,
    }


def prefect_ui() -> str | None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    if ui:
        return str(ui).rstrip("/")
    api = PREFECT_API_URL.value()
    return str(api).rstrip("/").removesuffix("/api") if api else None


def mlflow_ui(params: Params) -> str:
    from tasks.train import tracking_uri

    uri = tracking_uri(params)
    if uri.startswith(("http://", "https://")):
        # a link people open and paste: without the user:token@ MLflow's client sends
        # (the browser asks for them)
        parts = urlsplit(uri)
        netloc = parts.netloc.rpartition("@")[2]
        return redact(urlunsplit(parts._replace(netloc=netloc))).rstrip("/")
    return "http://127.0.0.1:5000"  # `make ui`


def next_run_facts(model: Model) -> dict[str, Any] | None:
    """The next scheduled run of the model's scheduled deployment, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    name = f"continuous-training/{deployment_name(model.name, 'scheduled')}"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return {"deployment": name, "at": None, "note": "not served: run `make serve`"}
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=1,
        )
    at = runs[0].expected_start_time if runs else None
    ui = prefect_ui()
    return {
        "deployment": name,
        "at": at.isoformat(timespec="seconds") if at else None,
        "link": f"{ui}/deployments/deployment/{deployment.id}" if ui else None,
        "paused": bool(getattr(deployment, "paused", False)),
    }


def gather(model: Model, limit: int = 5) -> Status:
    """The model's state; a source that fails is named in ``unavailable``."""
    params = model.params()
    status = Status(model.name, params.registry.model_name, str(model.params_file))
    uri = use_tracking(params)
    decisions: list[Decision] = []
    try:
        if not store_exists(uri):
            raise _NoStore
        decisions = read_decisions(params, limit=max(limit, 20))
        status.decisions = [asdict(d) for d in decisions[:limit]]
        status.champion = champion_facts(params, decisions)
        status.journal = journal_facts(params, prefect_known=_prefect_configured())
        freeze = read_freeze(params)
        status.frozen = asdict(freeze) if freeze else None
    except _NoStore:
        pass  # nothing trained yet: no champion, no decisions
    except Exception as exc:
        status.unavailable["mlflow"] = _why(exc)
    try:
        status.cluster = cluster_facts(params, status.champion)
    except Exception as exc:
        status.unavailable["kubernetes"] = _why(exc)
    if os.environ.get("PREFECT_API_URL") or _prefect_configured():
        from tasks.services import prefect_deadline

        try:
            with prefect_deadline(params.timeouts):
                status.next_run = next_run_facts(model)
        except Exception as exc:
            status.unavailable["prefect"] = _why(exc)
    else:
        status.unavailable["prefect"] = (
            "no Prefect server known (PREFECT_API_URL is not set and no running `make serve` "
            "is recorded in the project's state dir)"
        )
    ui = mlflow_ui(params)
    status.links["mlflow"] = f"{ui}/#/models/{params.registry.model_name}"
    if status.champion:
        status.links["champion"] = f"{ui}/#/models/{params.registry.model_name}/versions/" + str(
            status.champion["version"]
        )
    prefect = prefect_ui()
    if prefect:
        status.links["prefect"] = f"{prefect}/deployments"
    return status


def _prefect_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def render(status: Status) -> str:
    """The status as a terminal reads it at a glance."""
    lines = [f"{status.model}  (registered as {status.registry_name}; {status.params_file})"]
    c = status.champion
    if c:
        how = ""
        if c.get("promoted_at"):
            how = f", {c['how']} {c['promoted_at']} by {c['promoted_by']}: {c['why']}"
        lines.append(
            f"  champion    v{c['version']}  run {c['run_id']}  data {c['data_md5'][:12]}{how}"
        )
        for key, value in c["image"].items():
            lines.append(f"  image       {key} = {value}")
    elif "mlflow" not in status.unavailable:
        lines.append("  champion    none yet")
    k = status.cluster
    if k:
        if k["mode"] == "dry-run":
            lines.append(f"  cluster     {k['deployment']}: {k['note']}: {k['image'] or 'none'}")
        else:
            match = {True: "matches the champion", False: "DOES NOT MATCH the champion"}.get(
                k["matches_champion"], "no champion to compare"
            )
            lines.append(
                f"  cluster     {k['deployment']} runs {k['image']} "
                f"(model v{k['model_version'] or '?'}): {match}"
            )
    j = status.journal
    if not j:
        lines.append("  journal     none")
    else:
        move = f"move to v{j['version']} from v{j['previous_version'] or '-'}"
        where = ", ".join(j["deployments"]) or "no cluster"
        if j.get("state") == "in-progress":
            lines.append(f"  journal     IN PROGRESS: {move} ({where}); {j['note']}")
        else:
            lines.append(f"  journal     OPEN: {move} did not finish ({where}); {j['note']}")
    f = status.frozen
    lines.append(
        "  promotions  allowed"
        if not f
        else f"  promotions  FROZEN by {f['actor']} since {f['at']}: {f['reason']}"
    )
    n = status.next_run
    if n:
        when = n["at"] or n.get("note") or "none scheduled"
        lines.append(f"  next run    {when}  ({n['deployment']})")
    if status.decisions:
        lines.append("  last decisions:")
        lines.extend("    " + decision_line(Decision(**d)) for d in status.decisions)
    for name, url in status.links.items():
        lines.append(f"  {name + ' UI':<11} {url}")
    for source, why in status.unavailable.items():
        lines.append(f"  !! {source} not read: {why}")
    return "\n".join(lines)


def decision_line(d: Decision) -> str:
    version = f"v{d.version}" if d.version else "-"
    why = d.gate or ""
    if d.detail:
        why = f"{why}; {d.detail}" if why else d.detail
    who = f" by {d.actor}" if d.actor and d.actor != "flow" else ""
    data = f" data {d.data_md5[:10]}" if d.data_md5 else ""
    return f"{d.at}  {d.kind:<11} {version:<5}{data}{who}  {why.splitlines()[0] if why else ''}"

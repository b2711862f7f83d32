"""The one source of truth for ctflows' deployments: names, schedules, triggers, limits.

`python -m deployments.serve` builds served deployments from these specs, and
`python -m deployments.build` writes `deployments/prefect.yaml` (for `prefect deploy --all`)
from the same specs; a test keeps the committed file equal to what they generate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import Params

TRAINING_FLOW = "continuous-training"
TRAINING_ENTRYPOINT = "flows/continuous_training.py:continuous_training"
DRIFT_FLOW = "drift-monitor"
DRIFT_ENTRYPOINT = "flows/drift_monitor.py:drift_monitor"
REPAIR_FLOW = "repair"
REPAIR_ENTRYPOINT = "flows/repair.py:repair"
ROLLBACK_FLOW = "rollback"
ROLLBACK_ENTRYPOINT = "flows/rollback.py:rollback"
PROMOTE_FLOW = "promote"
PROMOTE_ENTRYPOINT = "flows/promote.py:promote"
MONITOR_FLOW = "production-monitor"
MONITOR_ENTRYPOINT = "flows/production_monitor.py:production_monitor"
WORK_POOL = "ctflows"
DATA_LANDED = "on-new-data"  # the deployment the webhook receiver starts


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    flow_name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str | None = None
    triggers: tuple[dict[str, Any], ...] = ()
    concurrency_limit: int | None = 1
    interval_seconds: int | None = None
    collision_strategy: str = "ENQUEUE"  # or CANCEL_NEW: a late tick is dropped, not queued
    # triggers of the work-pool deployment only (prefect.yaml): served, the process does it
    pool_triggers: tuple[dict[str, Any], ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


def data_resource_id(path: str) -> str:
    """The Prefect event resource id of a data path: triggers match on it."""
    return f"ctflows.data.{path}"


def model_deployment(model: str, kind: str) -> str:
    """A model's deployment name: every name carries the model, so models never collide."""
    return f"{model}-{kind}"


def data_landed_deployment(params: Params, model: str | None = None) -> str:
    """The full name of the deployment a data-landed webhook starts for ``model``
    (default: the model of ``params``, named by its registered model name)."""
    return f"{TRAINING_FLOW}/{model_deployment(model or params.registry.model_name, DATA_LANDED)}"


def deployment_specs(
    params: Params, params_file: str = "params.yaml", model: str | None = None
) -> list[DeploymentSpec]:
    """The deployments of one model (``model``, default its registered model name)."""
    model = model or params.registry.model_name
    schedule, drift = params.triggers.schedule, params.drift.schedule
    base = {"params_file": params_file}
    landed = {
        "type": "event",
        "enabled": True,
        "posture": "Reactive",
        "threshold": 1,
        "within": 0,
        "expect": [params.triggers.event, params.drift.event],
        "match": {"prefect.resource.id": data_resource_id(params.data.path)},
        "parameters": {
            "rev": "{{ event.payload.rev }}",
            "path": "{{ event.payload.path }}",
            "md5": "{{ event.payload.md5 }}",
            "params_file": params_file,
        },
    }
    return [
        DeploymentSpec(
            model_deployment(model, "scheduled"),
            TRAINING_FLOW,
            TRAINING_ENTRYPOINT,
            "Retrain on the newest data version on a schedule.",
            parameters=base,
            cron=schedule.cron,
            timezone=schedule.timezone,
        ),
        DeploymentSpec(
            model_deployment(model, DATA_LANDED),
            TRAINING_FLOW,
            TRAINING_ENTRYPOINT,
            f"Retrain when `{params.triggers.event}` (or drift) names {params.data.path}.",
            parameters=base,
            triggers=(landed,),
        ),
        DeploymentSpec(
            model_deployment(model, "manual"),
            TRAINING_FLOW,
            TRAINING_ENTRYPOINT,
            f"Retrain by hand: prefect deployment run '{TRAINING_FLOW}/"
            f"{model_deployment(model, 'manual')}' --param ... (or `ctflows run {model}`)",
            parameters=base,
        ),
        DeploymentSpec(
            model,
            ROLLBACK_FLOW,
            ROLLBACK_ENTRYPOINT,
            f"Put the previous champion (or --param version=N) back: prefect deployment run "
            f"'{ROLLBACK_FLOW}/{model}' (or `ctflows rollback {model}`).",
            parameters=base,
        ),
        DeploymentSpec(
            model,
            PROMOTE_FLOW,
            PROMOTE_ENTRYPOINT,
            f"Make a validated version champion: prefect deployment run '{PROMOTE_FLOW}/{model}' "
            "--param version=N --param reason=... (or `ctflows promote`).",
            parameters=base,
        ),
        DeploymentSpec(
            model_deployment(model, "daily"),
            DRIFT_FLOW,
            DRIFT_ENTRYPOINT,
            "Compare the newest data with the champion's training data; emit drift events.",
            parameters=base,
            cron=drift.cron,
            timezone=drift.timezone,
        ),
        DeploymentSpec(
            model_deployment(model, "scheduled"),
            MONITOR_FLOW,
            MONITOR_ENTRYPOINT,
            "Watch production: the inference log against the champion's training rows and "
            "holdout; emit the retraining event past params.monitor's thresholds. By hand: "
            f"prefect deployment run '{MONITOR_FLOW}/{model_deployment(model, 'scheduled')}'.",
            parameters=base,
            cron=params.monitor.schedule.cron,
            timezone=params.monitor.schedule.timezone,
            collision_strategy="CANCEL_NEW",
        ),
        DeploymentSpec(
            model,
            REPAIR_FLOW,
            REPAIR_ENTRYPOINT,
            "Finish undoing a promotion or rollback that a killed run left half-done. Started "
            "by the served process when a journal is stale (deployments/repair_watch.py), by a "
            f"crashed run with a work pool, or by hand: prefect deployment run '{REPAIR_FLOW}/"
            f"{model}'.",
            parameters=base,
            collision_strategy="CANCEL_NEW",
            pool_triggers=(repair_on_crash(model, params_file),),
        ),
    ]


def repair_on_crash(model: str, params_file: str) -> dict[str, Any]:
    """With a work pool no ctflows process lives between runs to watch the journals: a run
    of the model's training, rollback or promote deployments that crashes starts a repair."""
    journaling = [model_deployment(model, k) for k in ("scheduled", DATA_LANDED, "manual")]
    return {
        "type": "event",
        "enabled": True,
        "posture": "Reactive",
        "threshold": 1,
        "within": 0,
        "expect": ["prefect.flow-run.Crashed"],
        "match_related": [
            {
                "prefect.resource.role": "flow",
                "prefect.resource.name": [TRAINING_FLOW, ROLLBACK_FLOW, PROMOTE_FLOW],
            },
            {"prefect.resource.role": "deployment", "prefect.resource.name": [*journaling, model]},
        ],
        "parameters": {"params_file": params_file},
    }


def _schedules(spec: DeploymentSpec) -> list[dict[str, Any]]:
    if spec.cron:
        return [{"cron": spec.cron, "timezone": spec.timezone, "active": True}]
    if spec.interval_seconds:
        return [{"interval": spec.interval_seconds, "active": True}]
    return []


def prefect_yaml(specs: list[DeploymentSpec]) -> dict[str, Any]:
    """The `prefect deploy --all` project file for ``specs`` (a process work pool)."""
    deployments = []
    for spec in specs:
        entry: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "entrypoint": spec.entrypoint,
            "parameters": dict(spec.parameters),
            "work_pool": {"name": WORK_POOL},
            "schedules": _schedules(spec),
        }
        if spec.triggers or spec.pool_triggers:
            entry["triggers"] = [dict(t) for t in (*spec.triggers, *spec.pool_triggers)]
        if spec.concurrency_limit:
            entry["concurrency_limit"] = {
                "limit": spec.concurrency_limit,
                "collision_strategy": spec.collision_strategy,
            }
        deployments.append(entry)
    return {
        "name": "ctflows",
        "prefect-version": "3.8.8",
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $CTFLOWS_HOME }}"
                }
            }
        ],
        "deployments": deployments,
    }


def project_specs(params_file: str | Path, relative: bool = False) -> list[DeploymentSpec]:
    """The deployments of every model of the project whose root params.yaml is ``params_file``
    (models.d/<name>/params.yaml, or the root file alone); ``relative``: params files named
    relative to the project root (for prefect.yaml, run from $CTFLOWS_HOME)."""
    from ctflows.catalog import discover, working

    root = Path(params_file).resolve().parent
    specs = []
    for model in working(discover(root)):
        file = model.params_file.relative_to(root) if relative else model.params_file
        specs.extend(deployment_specs(model.params(), str(file), model.name))
    return specs

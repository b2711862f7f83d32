"""The one source of truth for ctflows' deployments: names, schedules, triggers, limits.

`python -m deployments.serve` builds served deployments from these specs, and
`python -m deployments.build` writes `deployments/prefect.yaml` (for `prefect deploy --all`)
from the same specs; a test keeps the committed file equal to what they generate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.config import Params

TRAINING_FLOW = "continuous-training"
TRAINING_ENTRYPOINT = "flows/continuous_training.py:continuous_training"
DRIFT_FLOW = "drift-monitor"
DRIFT_ENTRYPOINT = "flows/drift_monitor.py:drift_monitor"
REPAIR_FLOW = "repair"
REPAIR_ENTRYPOINT = "flows/repair.py:repair"
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

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


def data_resource_id(path: str) -> str:
    """The Prefect event resource id of a data path: triggers match on it."""
    return f"ctflows.data.{path}"


def data_landed_deployment(params: Params) -> str:
    """The full name of the deployment a data-landed webhook starts."""
    return f"{TRAINING_FLOW}/{DATA_LANDED}"


def deployment_specs(params: Params, params_file: str = "params.yaml") -> list[DeploymentSpec]:
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
            "scheduled",
            TRAINING_FLOW,
            TRAINING_ENTRYPOINT,
            "Retrain on the newest data version on a schedule.",
            parameters=base,
            cron=schedule.cron,
            timezone=schedule.timezone,
        ),
        DeploymentSpec(
            DATA_LANDED,
            TRAINING_FLOW,
            TRAINING_ENTRYPOINT,
            f"Retrain when `{params.triggers.event}` (or drift) names {params.data.path}.",
            parameters=base,
            triggers=(landed,),
        ),
        DeploymentSpec(
            "manual",
            TRAINING_FLOW,
            TRAINING_ENTRYPOINT,
            "Retrain by hand: prefect deployment run 'continuous-training/manual' --param ...",
            parameters=base,
        ),
        DeploymentSpec(
            "daily",
            DRIFT_FLOW,
            DRIFT_ENTRYPOINT,
            "Compare the newest data with the champion's training data; emit drift events.",
            parameters=base,
            cron=drift.cron,
            timezone=drift.timezone,
        ),
        DeploymentSpec(
            "scheduled",
            REPAIR_FLOW,
            REPAIR_ENTRYPOINT,
            "Finish undoing a promotion or rollback that a killed run left half-done.",
            parameters=base,
            interval_seconds=params.triggers.repair_seconds,
            collision_strategy="CANCEL_NEW",
        ),
    ]


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
        if spec.triggers:
            entry["triggers"] = [dict(t) for t in spec.triggers]
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

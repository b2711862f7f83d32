"""Stage `deploy`: point the serving Deployment at the promoted model's image, wait until it
really serves, and put everything back by itself when it does not.

This module decides what to ship and where (the model's identity and image, cluster or
explicit dry run, one or more target Deployments, canary first); tasks/cluster.py talks to
the Kubernetes API and follows each rollout the way `kubectl rollout status` does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.cluster import (
    ANNOTATION_PREFIX,
    Cluster,
    DeployError,
    PodTemplate,
    RolloutFailed,
    open_cluster,
    template_patch,
)
from tasks.config import DeployParams, Params

log = logging.getLogger(__name__)

Mode = Literal["cluster", "dry-run"]
IDENTITY_KEYS = tuple(
    f"{ANNOTATION_PREFIX}{k}" for k in ("model-name", "model-version", "mlflow-run-id", "data-md5")
)


@dataclass(frozen=True)
class ModelIdentity:
    """What a model image holds, and the image: written into the pod template's annotations.

    ``image`` is ``repository@sha256:<digest>`` (or ``oci:<layout>@sha256:...`` when built
    locally, for the dry-run record); the Deployment never gets a mutable tag.
    """

    model_name: str
    version: str
    run_id: str
    data_md5: str
    image: str = ""
    image_digest: str = ""
    image_kind: str = ""

    def annotations(self) -> dict[str, str]:
        notes = dict(
            zip(
                IDENTITY_KEYS,
                (self.model_name, self.version, self.run_id, self.data_md5),
                strict=True,
            )
        )
        if self.image_digest:
            notes[f"{ANNOTATION_PREFIX}image-digest"] = self.image_digest
            notes[f"{ANNOTATION_PREFIX}image-kind"] = self.image_kind
        return notes


@dataclass(frozen=True)
class DeployResult:
    mode: Mode
    namespace: str
    deployment: str
    image: str
    previous_image: str | None
    patch: dict[str, Any] = field(default_factory=dict)
    record: Path | None = None
    canary: str | None = None

    @property
    def deployed(self) -> bool:
        return self.mode == "cluster"

    def summary(self) -> str:
        where = f"{self.namespace}/{self.deployment}"
        if self.deployed:
            via = f" after canary {self.canary}" if self.canary else ""
            return f"{where} now runs {self.image} (was {self.previous_image}){via}"
        local = " (built locally, not pushed)" if self.image.startswith("oci:") else ""
        return f"dry run, nothing deployed: would set {where} to {self.image}{local}"


def image_reference(identity: ModelIdentity, mode: Mode) -> str:
    """The by-digest reference to deploy; DeployError when there is none a cluster can pull."""
    if not identity.image or "@sha256:" not in identity.image:
        raise DeployError(
            f"{identity.model_name} v{identity.version} has no image built by digest (MLflow "
            "version tag ct.image); rebuild it with the continuous-training flow"
        )
    if mode == "cluster" and identity.image.startswith("oci:"):
        raise DeployError(
            f"{identity.model_name} v{identity.version}'s image was built locally, not pushed "
            f"({identity.image}); a cluster cannot pull it: set image.repository"
        )
    return identity.image


def resolve_mode(deploy: DeployParams, environ: dict[str, str] | None = None) -> Mode:
    """``cluster`` only for a cluster the user named, else the explicit dry run.

    ``auto`` deploys only when params name both ``deploy.kubeconfig`` and ``deploy.context``:
    never to whatever context happens to be current in ``$KUBECONFIG`` or ``~/.kube/config``
    (a demo or a test must not touch a cluster the user did not name). ``cluster`` is the
    explicit choice: params' kubeconfig and context, else ``$KUBECONFIG``/``~/.kube/config``
    or the in-cluster config.
    """
    del environ  # the environment no longer chooses a cluster; kept for callers' signature
    if deploy.target != "auto":
        return deploy.target
    return "cluster" if deploy.kubeconfig and deploy.context else "dry-run"


def dry_run_reason(deploy: DeployParams) -> str:
    """Why a run does not deploy, for the log and the Slack message."""
    if deploy.target == "dry-run":
        return "deploy.target is dry-run"
    return (
        "deploy.target is auto and params do not name a cluster (deploy.kubeconfig and "
        "deploy.context); set both, or deploy.target: cluster"
    )


def targets(deploy: DeployParams) -> list[str]:
    """The Deployments a promotion changes, in order: the canary first when there is one."""
    if deploy.strategy == "canary":
        return [f"{deploy.deployment}{deploy.canary.suffix}", deploy.deployment]
    return [deploy.deployment]


def read_templates(cluster: Cluster) -> dict[str, PodTemplate]:
    return {name: cluster.current(name) for name in targets(cluster.deploy)}


def ship(cluster: Cluster, target: PodTemplate) -> dict[str, PodTemplate]:
    """Roll ``target`` out (canary first, held healthy, then the main Deployment).

    On failure everything this call changed is put back; a failing canary leaves the main
    Deployment untouched. Returns the templates that were replaced.
    """
    deploy, timeout = cluster.deploy, cluster.deploy.rollout_timeout_seconds
    replaced: dict[str, PodTemplate] = {}
    names = targets(deploy)
    for name in names:
        try:
            replaced[name] = cluster.roll_out(name, target, timeout)
            if name != names[-1]:
                cluster.hold(name, deploy.canary.hold_seconds)
        except RolloutFailed:
            for done, previous in replaced.items():
                if done != name:
                    cluster.restore(done, previous, timeout)
                elif cluster.current(name) != previous:  # failed during the hold
                    cluster.restore(name, previous, timeout)
            raise
    return replaced


def record_dry_run(state_dir: Path, entry: dict[str, Any]) -> Path:
    """Append the patch that would have been sent to ``deploy/dry-run.jsonl``."""
    path = state_dir / "deploy" / "dry-run.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(
            json.dumps({"at": datetime.now(UTC).isoformat(), "mode": "dry-run", **entry}) + "\n"
        )
    return path


@task(name="check-deployment", cache_policy=NONE)  # Cluster retries what is transient
def check_deployment(params: Params) -> dict[str, PodTemplate]:
    """Before promoting: the Deployments and container exist and are readable ({} in dry run)."""
    if resolve_mode(params.deploy) == "dry-run":
        return {}
    return read_templates(open_cluster(params))


@task(name="deploy-model", cache_policy=NONE)
def deploy_model(identity: ModelIdentity, params: Params) -> DeployResult:
    """Roll the model's image out and wait for it, or record the patch without a cluster."""
    logger = get_run_logger()
    deploy = params.deploy
    mode = resolve_mode(deploy)
    target = PodTemplate(image_reference(identity, mode), identity.annotations())
    patch = template_patch(deploy.container, target)
    if mode == "dry-run":
        record = record_dry_run(
            params.state_dir,
            {
                "namespace": deploy.namespace,
                "deployments": targets(deploy),
                "image": target.image,
                "image_digest": identity.image_digest,
                "image_kind": identity.image_kind,
                "pushed": not target.image.startswith("oci:"),
                "patch": patch,
            },
        )
        logger.warning(
            "DRY RUN (%s): nothing deployed; the patch setting %s/%s to %s is recorded in %s",
            dry_run_reason(deploy),
            deploy.namespace,
            deploy.deployment,
            target.image,
            record,
        )
        return DeployResult(
            "dry-run", deploy.namespace, deploy.deployment, target.image, None, patch, record
        )
    cluster = open_cluster(params)
    replaced = ship(cluster, target)
    previous = replaced[deploy.deployment].image
    canary = next((n for n in replaced if n != deploy.deployment), None)
    logger.info(
        "%s/%s rolled out %s (was %s), model %s v%s",
        deploy.namespace,
        deploy.deployment,
        target.image,
        previous,
        identity.model_name,
        identity.version,
    )
    return DeployResult(
        "cluster", deploy.namespace, deploy.deployment, target.image, previous, patch, canary=canary
    )

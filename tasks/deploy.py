"""Stage `deploy`: point the serving Deployment at the promoted model's image."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DeployParams, Params
from tasks.promote import Promotion

log = logging.getLogger(__name__)

Mode = Literal["cluster", "dry-run"]
ANNOTATION_PREFIX = "ctflows.io/"


class DeployError(RuntimeError):
    """The Deployment could not be read or patched; the message names the cause."""


@dataclass(frozen=True)
class DeployResult:
    mode: Mode
    namespace: str
    deployment: str
    image: str
    previous_image: str | None
    patch: dict[str, Any] = field(default_factory=dict)
    record: Path | None = None

    @property
    def deployed(self) -> bool:
        return self.mode == "cluster"

    def summary(self) -> str:
        where = f"{self.namespace}/{self.deployment}"
        if self.deployed:
            return f"{where} now runs {self.image} (was {self.previous_image})"
        return f"dry run, nothing deployed: would set {where} to {self.image}"


def render_image(template: str, promotion: Promotion) -> str:
    return template.format(
        model_name=promotion.model_name,
        version=promotion.version,
        run_id=promotion.run_id,
        data_md5=promotion.data_md5[:12],
    )


def build_patch(deploy: DeployParams, image: str, promotion: Promotion) -> dict[str, Any]:
    """Strategic-merge patch: the container's image and the model's identity on the pod template."""
    annotations = {
        f"{ANNOTATION_PREFIX}model-name": promotion.model_name,
        f"{ANNOTATION_PREFIX}model-version": promotion.version,
        f"{ANNOTATION_PREFIX}mlflow-run-id": promotion.run_id,
        f"{ANNOTATION_PREFIX}data-md5": promotion.data_md5,
    }
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": deploy.container, "image": image}]},
            }
        }
    }


def resolve_mode(deploy: DeployParams, environ: dict[str, str] | None = None) -> Mode:
    """``cluster`` when a kubeconfig or in-cluster config exists (or is demanded), else dry run."""
    env = os.environ if environ is None else environ
    if deploy.target != "auto":
        return deploy.target
    if deploy.kubeconfig or env.get("KUBECONFIG") or env.get("KUBERNETES_SERVICE_HOST"):
        return "cluster"
    return "cluster" if (Path.home() / ".kube" / "config").exists() else "dry-run"


def apps_api(deploy: DeployParams) -> Any:
    """AppsV1Api from the configured kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if deploy.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.AppsV1Api()
        api_client = config.new_client_from_config(
            config_file=str(deploy.kubeconfig) if deploy.kubeconfig else None,
            context=deploy.context,
        )
    except (ConfigException, OSError) as exc:
        raise DeployError(f"no usable Kubernetes configuration: {exc}") from exc
    return client.AppsV1Api(api_client)


def _api_error(exc: Exception, deploy: DeployParams, action: str) -> DeployError:
    status = getattr(exc, "status", None)
    where = f"deployment {deploy.namespace}/{deploy.deployment}"
    if status == 404:
        return DeployError(f"{where} does not exist (404 on {action}); check deploy.* in params")
    if status == 403:
        return DeployError(
            f"{action} {where} forbidden (403): the service account needs get and patch on it"
        )
    if status is not None:
        return DeployError(
            f"Kubernetes API answered {status} {getattr(exc, 'reason', '')} on {action} {where}"
        )
    return DeployError(f"Kubernetes API unreachable on {action} {where}: {exc}")


def read_current_image(api: Any, deploy: DeployParams) -> str:
    """The serving container's image now; fails before any change if it cannot be found."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        current = api.read_namespaced_deployment(deploy.deployment, deploy.namespace)
    except (ApiException, HTTPError, OSError) as exc:
        raise _api_error(exc, deploy, "read") from exc
    containers = {c.name: c.image for c in current.spec.template.spec.containers}
    if deploy.container not in containers:
        raise DeployError(
            f"deployment {deploy.namespace}/{deploy.deployment} has no container "
            f"{deploy.container!r} (it has {sorted(containers)}); fix deploy.container"
        )
    return str(containers[deploy.container])


def patch_deployment(api: Any, deploy: DeployParams, patch: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        api.patch_namespaced_deployment(deploy.deployment, deploy.namespace, patch)
    except (ApiException, HTTPError, OSError) as exc:
        raise _api_error(exc, deploy, "patch") from exc


def record_dry_run(state_dir: Path, result: DeployResult) -> Path:
    """Append the patch that would have been sent to ``deploy/dry-run.jsonl``."""
    path = state_dir / "deploy" / "dry-run.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "mode": "dry-run",
        "namespace": result.namespace,
        "deployment": result.deployment,
        "image": result.image,
        "patch": result.patch,
    }
    with path.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return path


@task(name="check-deployment", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def check_deployment(params: Params) -> str | None:
    """Before promoting: the Deployment and container exist and are readable (None in dry run)."""
    if resolve_mode(params.deploy) == "dry-run":
        return None
    return read_current_image(apps_api(params.deploy), params.deploy)


@task(name="deploy-model", cache_policy=NONE)
def deploy_model(promotion: Promotion, params: Params) -> DeployResult:
    """Patch the Deployment, or record the patch when no cluster is configured."""
    logger = get_run_logger()
    deploy = params.deploy
    image = render_image(deploy.image_template, promotion)
    patch = build_patch(deploy, image, promotion)
    if resolve_mode(deploy) == "dry-run":
        result = DeployResult("dry-run", deploy.namespace, deploy.deployment, image, None, patch)
        record = record_dry_run(params.state_dir, result)
        logger.warning(
            "DRY RUN (no Kubernetes cluster configured): nothing deployed; the patch setting "
            "%s/%s to %s is recorded in %s",
            deploy.namespace,
            deploy.deployment,
            image,
            record,
        )
        return DeployResult(
            "dry-run", deploy.namespace, deploy.deployment, image, None, patch, record
        )
    api = apps_api(deploy)
    previous = read_current_image(api, deploy)
    patch_deployment(api, deploy, patch)
    logger.info(
        "patched %s/%s container %s: %s -> %s (model %s v%s)",
        deploy.namespace,
        deploy.deployment,
        deploy.container,
        previous,
        image,
        promotion.model_name,
        promotion.version,
    )
    return DeployResult("cluster", deploy.namespace, deploy.deployment, image, previous, patch)

"""Stage `deploy`: point the serving Deployment at the promoted model's image, wait until it
really serves, and put everything back by itself when it does not.

The rollout is followed the way `kubectl rollout status` follows it: ``metadata.generation``
against ``status.observedGeneration``, ``updatedReplicas``, ``availableReplicas`` and the
``Progressing`` condition (``ProgressDeadlineExceeded``), within ``deploy.rollout_timeout_seconds``.
Transient API errors (5xx, 409, 429, timeouts, refused connections) are retried with backoff;
errors that will not change (404, 403, 422, ...) are not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DeployParams, Params

log = logging.getLogger(__name__)

Mode = Literal["cluster", "dry-run"]
ANNOTATION_PREFIX = "ctflows.io/"
IDENTITY_KEYS = tuple(
    f"{ANNOTATION_PREFIX}{k}" for k in ("model-name", "model-version", "mlflow-run-id", "data-md5")
)
RETRYABLE = {409, 429, 500, 502, 503, 504}
T = TypeVar("T")


class DeployError(RuntimeError):
    """The Deployment could not be read or patched; the message names the cause."""


class RolloutFailed(DeployError):
    """The new pods did not become available; the Deployment was put back as it was."""

    def __init__(self, deployment: str, reason: str, reverted_to: str | None = None) -> None:
        self.deployment, self.reason, self.reverted_to = deployment, reason, reverted_to
        back = f"; rolled back to {reverted_to}" if reverted_to else ""
        super().__init__(f"rollout of {deployment} failed: {reason}{back}")


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
class PodTemplate:
    """The part of a Deployment ctflows changes: the serving image and its annotations."""

    image: str
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def model_version(self) -> str | None:
        return self.annotations.get(f"{ANNOTATION_PREFIX}model-version")


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


def template_patch(
    container: str, target: PodTemplate, current: PodTemplate | None = None
) -> dict[str, Any]:
    """Strategic-merge patch setting the container's image and ctflows' annotations.

    Annotations ctflows set before and ``target`` lacks are removed (null), so a rollback
    restores the previous pod template exactly.
    """
    annotations: dict[str, str | None] = dict(target.annotations)
    for key in current.annotations if current else {}:
        if key.startswith(ANNOTATION_PREFIX) and key not in target.annotations:
            annotations[key] = None
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": container, "image": target.image}]},
            }
        }
    }


def rollout_status(dep: dict[str, Any]) -> tuple[bool, str | None, str]:
    """(done, failure, message) of a Deployment, as `kubectl rollout status` decides them."""
    meta, spec, status = dep.get("metadata", {}), dep.get("spec", {}), dep.get("status") or {}
    name = meta.get("name", "?")
    if meta.get("generation", 0) > (status.get("observedGeneration") or 0):
        return False, None, f"waiting for {name}'s spec update to be observed"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, f"{name} exceeded its progress deadline", ""
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    replicas = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if want is not None and updated < want:
        return False, None, f"{updated} of {want} new replicas have been updated"
    if replicas > updated:
        return False, None, f"{replicas - updated} old replicas are pending termination"
    if available < updated:
        return False, None, f"{available} of {updated} updated replicas are available"
    return True, None, f"{name} successfully rolled out"


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


class Cluster:
    """The Deployments of one namespace through the kubernetes client, with retries."""

    def __init__(
        self, deploy: DeployParams, api: Any | None = None, request_timeout: float = 10.0
    ) -> None:
        self.deploy = deploy
        self.api = api if api is not None else apps_api(deploy)
        self.sleep: Callable[[float], None] = time.sleep
        self.request_timeout = request_timeout  # seconds per API request (timeouts.kubernetes)

    @property
    def address(self) -> str:
        """The API server this client talks to (credentials redacted)."""
        from tasks.services import redact

        host = getattr(
            getattr(getattr(self.api, "api_client", None), "configuration", None), "host", ""
        )
        return redact(str(host or "?"))

    def _call(self, action: str, name: str, fn: Callable[[], T]) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        delay = 0.2
        for attempt in range(self.deploy.api_retries + 1):
            try:
                return fn()
            except (ApiException, HTTPError, OSError) as exc:
                status = getattr(exc, "status", None)
                transient = status in RETRYABLE or status is None
                if not transient or attempt == self.deploy.api_retries:
                    raise self._error(exc, action, name) from exc
                log.warning("%s %s: %s; retrying in %.1fs", action, name, exc, delay)
                self.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _error(self, exc: Exception, action: str, name: str) -> DeployError:
        status = getattr(exc, "status", None)
        where = f"deployment {self.deploy.namespace}/{name}"
        if status == 404:
            return DeployError(
                f"{where} does not exist (404 on {action}); check deploy.* in params"
            )
        if status == 403:
            return DeployError(
                f"{action} {where} forbidden (403): the service account needs get, list, watch "
                "and patch on it (deployments/k8s/rbac.yaml)"
            )
        if status is not None:
            return DeployError(
                f"Kubernetes API answered {status} {getattr(exc, 'reason', '')} on {action} "
                f"{where} (after {self.deploy.api_retries} retries if transient)"
            )
        from tasks.services import redact

        return DeployError(
            f"Kubernetes API at {self.address} unreachable on {action} {where} "
            f"(deadline {self.request_timeout:g}s per request, {self.deploy.api_retries} "
            f"retries; timeouts.kubernetes): {redact(str(exc))}"
        )

    def read(self, name: str) -> dict[str, Any]:
        ns = self.deploy.namespace
        obj = self._call(
            "read",
            name,
            lambda: self.api.read_namespaced_deployment(
                name, ns, _request_timeout=self.request_timeout
            ),
        )
        data: dict[str, Any] = self.api.api_client.sanitize_for_serialization(obj)
        return data

    def current(self, name: str) -> PodTemplate:
        """The serving container's image and annotations; fails if the container is missing."""
        dep = self.read(name)
        template = dep["spec"]["template"]
        containers = {c["name"]: c.get("image", "") for c in template["spec"]["containers"]}
        if self.deploy.container not in containers:
            raise DeployError(
                f"deployment {self.deploy.namespace}/{name} has no container "
                f"{self.deploy.container!r} (it has {sorted(containers)}); fix deploy.container"
            )
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        return PodTemplate(containers[self.deploy.container], dict(annotations))

    def patch(self, name: str, body: dict[str, Any]) -> None:
        ns = self.deploy.namespace
        self._call(
            "patch",
            name,
            lambda: self.api.patch_namespaced_deployment(
                name, ns, body, _request_timeout=self.request_timeout
            ),
        )

    def wait_rollout(self, name: str, timeout: float) -> str:
        """Wait until the rollout is complete; RolloutFailed on deadline or timeout."""
        deadline = time.monotonic() + timeout
        message = "not observed yet"
        pause = min(0.1, self.deploy.poll_seconds)  # a fast rollout is seen at once
        while time.monotonic() < deadline:
            done, failure, message = rollout_status(self.read(name))
            if failure:
                raise RolloutFailed(name, failure)
            if done:
                return message
            self.sleep(pause)
            pause = min(pause * 2, self.deploy.poll_seconds)
        raise RolloutFailed(name, f"not available after {timeout:.0f}s ({message})")

    def roll_out(self, name: str, target: PodTemplate, timeout: float) -> PodTemplate:
        """Patch ``name`` to ``target`` and wait; on failure patch the old template back,
        wait for that rollout too, and raise RolloutFailed. Returns the old template."""
        before = self.current(name)
        self.patch(name, template_patch(self.deploy.container, target, before))
        try:
            self.wait_rollout(name, timeout)
        except DeployError as exc:
            reason = exc.reason if isinstance(exc, RolloutFailed) else str(exc)
            self.restore(name, before, timeout)
            raise RolloutFailed(name, reason, reverted_to=before.image) from exc
        return before

    def restore(self, name: str, previous: PodTemplate, timeout: float) -> None:
        """Put ``previous`` back and wait for it (errors are logged: the caller is failing)."""
        try:
            current = self.current(name)
            if current != previous:
                self.patch(name, template_patch(self.deploy.container, previous, current))
            self.wait_rollout(name, timeout)
        except DeployError as exc:
            log.error("could not restore %s to %s: %s", name, previous.image, exc)
            raise

    def hold(self, name: str, seconds: float) -> None:
        """Require ``name`` to stay fully available for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, failure, message = rollout_status(self.read(name))
            if failure or not done:
                raise RolloutFailed(
                    name, failure or f"became unhealthy during the hold ({message})"
                )
            self.sleep(min(self.deploy.poll_seconds, max(0.0, deadline - time.monotonic())))


def apps_api(deploy: DeployParams) -> Any:
    """AppsV1Api from the configured kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster.

    urllib3 underneath retries a timed-out request three more times on its own, which would
    make each request's deadline (``timeouts.kubernetes``) four deadlines, unseen: its retries
    are turned off, and Cluster retries what is transient (``deploy.api_retries``), saying so.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        if deploy.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=str(deploy.kubeconfig) if deploy.kubeconfig else None,
                context=deploy.context,
                client_configuration=configuration,
            )
    except (ConfigException, OSError) as exc:
        raise DeployError(f"no usable Kubernetes configuration: {exc}") from exc
    configuration.retries = False  # one request is one attempt, bounded by its deadline
    return client.AppsV1Api(client.ApiClient(configuration))


def open_cluster(params: Params) -> Cluster:
    """The configured cluster, each API request bounded by ``timeouts.kubernetes``."""
    return Cluster(params.deploy, request_timeout=params.timeouts.kubernetes)


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

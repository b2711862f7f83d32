"""The serving Deployments of one namespace, through the kubernetes client: read, patch, and
follow a rollout the way `kubectl rollout status` does, with retries.

The rollout is followed by ``metadata.generation`` against ``status.observedGeneration``,
``updatedReplicas``, ``availableReplicas`` and the ``Progressing`` condition
(``ProgressDeadlineExceeded``), within ``deploy.rollout_timeout_seconds``. Transient API
errors (5xx, 409, 429, timeouts, refused connections) are retried with backoff; errors that
will not change (404, 403, 422, ...) are not. The deploy stage (what to ship, dry runs, the
tasks) is tasks/deploy.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tasks.config import DeployParams, Params
from tasks.errors import CtflowsError, ErrorKind

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "ctflows.io/"
RETRYABLE = {409, 429, 500, 502, 503, 504}
T = TypeVar("T")


class DeployError(CtflowsError, RuntimeError):
    """The Deployment could not be read or patched; the message names the cause."""

    kind = ErrorKind.UNAVAILABLE


class RolloutFailed(DeployError):
    """The new pods did not become available; the Deployment was put back as it was."""

    kind = ErrorKind.FAILED

    def __init__(self, deployment: str, reason: str, reverted_to: str | None = None) -> None:
        self.deployment, self.reason, self.reverted_to = deployment, reason, reverted_to
        back = f"; rolled back to {reverted_to}" if reverted_to else ""
        super().__init__(f"rollout of {deployment} failed: {reason}{back}")


@dataclass(frozen=True)
class PodTemplate:
    """The part of a Deployment ctflows changes: the serving image and its annotations."""

    image: str
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def model_version(self) -> str | None:
        return self.annotations.get(f"{ANNOTATION_PREFIX}model-version")


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

"""Sections that ship a model: registry, MLflow, Kubernetes deploy, the model image, Slack."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

if TYPE_CHECKING:
    pass
from tasks.config.base import (
    _DNS_LABEL,
    _DNS_SUBDOMAIN,
    TRACKING_SCHEMES,
    _block_name,
    _env_name,
    _Section,
)


class RegistryParams(_Section):
    model_name: str = Field("churn-classifier", min_length=1)
    alias: str = "champion"

    @field_validator("alias")
    @classmethod
    def _mlflow_alias(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_\-]+$", value) or value.lower() == "latest":
            raise ValueError(
                f"{value!r} is not an MLflow alias (letters, digits, _ and -; not 'latest')"
            )
        if re.match(r"^[vV]\d+$", value):
            raise ValueError(f"{value!r} looks like a version (v<number>); MLflow refuses it")
        return value


class MlflowParams(_Section):
    tracking_uri: str | None = None
    experiment: str = Field("continuous-training", min_length=1)

    @field_validator("tracking_uri")
    @classmethod
    def _known_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        from tasks.services import redact

        parts = urlsplit(value)
        scheme = parts.scheme.split("+")[0]
        if scheme not in TRACKING_SCHEMES:
            raise ValueError(
                f"{redact(value)!r} is not a tracking URI: expected one of "
                f"{sorted(TRACKING_SCHEMES)}:// (null: SQLite in project.state_dir)"
            )
        if scheme in {"http", "https"} and not parts.hostname:
            raise ValueError(f"{redact(value)!r} names no host")
        try:
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError as exc:
            raise ValueError(f"{redact(value)!r} has an invalid port") from exc
        return value


class CanaryParams(_Section):
    suffix: str = "-canary"
    hold_seconds: float = Field(30.0, ge=0)


class DeployParams(_Section):
    target: Literal["auto", "cluster", "dry-run"] = "auto"
    strategy: Literal["rolling", "canary"] = "rolling"
    canary: CanaryParams = CanaryParams()
    rollout_timeout_seconds: float = Field(300.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    api_retries: int = Field(4, ge=0)
    namespace: str = "default"
    deployment: str
    container: str
    image_template: str | None = None  # replaced by image.repository/image.tag (by digest)
    kubeconfig: Path | None = None
    context: str | None = None

    @field_validator("namespace", "container")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes name (RFC 1123 label)")
        return value

    @field_validator("deployment")
    @classmethod
    def _dns_subdomain(cls, value: str) -> str:
        if not _DNS_SUBDOMAIN.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes name (RFC 1123 subdomain)")
        return value

    @model_validator(mode="after")
    def _canary_name(self) -> DeployParams:
        name = f"{self.deployment}{self.canary.suffix}"
        if self.strategy == "canary" and not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"canary Deployment name {name!r} is not a Kubernetes name")
        return self

    @field_validator("image_template")
    @classmethod
    def _replaced(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "images are now built by ctflows and deployed by digest: remove "
                "deploy.image_template and set image.repository (and image.tag) instead"
            )
        return value


IMAGE_TAG_FIELDS = frozenset({"model_name", "version", "run_id", "data_md5"})
_PINNED = r"^[^/\s]+\.?[^/\s]*/[^@\s]+@sha256:[0-9a-f]{64}$"


class ImageParams(_Section):
    """The model image built per promoted version (stage `image`)."""

    repository: str | None = None  # registry/path to push to; None: OCI layout in state_dir only
    base: str | None = None  # serving base image, pinned by digest; None: model-only (modelcar)
    platform: str = "linux/amd64"  # picked from a multi-architecture base
    tag: str = "{model_name}-v{version}"
    model_path: str = "/models"  # where the MLflow model directory lands in the image
    source: str | None = None  # org.opencontainers.image.source
    auth_backend: Literal["token", "basic"] = "token"
    username_env: str = "CTFLOWS_REGISTRY_USERNAME"
    password_env: str = "CTFLOWS_REGISTRY_PASSWORD"
    timeout_seconds: float = Field(30.0, gt=0)
    retries: int = Field(2, ge=0)

    @field_validator("base")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.match(_PINNED, value):
            raise ValueError(
                f"{value!r} is not pinned by digest: expected host/path@sha256:<64 hex> "
                "(a tag can move; look the digest up with `skopeo inspect docker://<ref>`)"
            )
        return value

    @field_validator("repository")
    @classmethod
    def _bare_repository(cls, value: str | None) -> str | None:
        if value is not None and ("@" in value or ":" in value.rsplit("/", 1)[-1]):
            raise ValueError(
                f"{value!r}: give the repository without tag or digest (the tag is image.tag)"
            )
        if value is not None and "/" not in value:
            raise ValueError(f"{value!r}: expected host[:port]/path, e.g. ghcr.io/team/churn-model")
        return value

    @field_validator("platform")
    @classmethod
    def _os_arch(cls, value: str) -> str:
        if value.count("/") not in (1, 2):
            raise ValueError(f"expected os/arch[/variant] like linux/amd64, got {value!r}")
        return value

    @field_validator("model_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError(f"expected an absolute directory like /models, got {value!r}")
        return value.rstrip("/")

    @field_validator("tag")
    @classmethod
    def _tag_fields(cls, value: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = fields - IMAGE_TAG_FIELDS
        if unknown:
            raise ValueError(
                f"unknown field(s) {sorted(unknown)}; allowed: {sorted(IMAGE_TAG_FIELDS)}"
            )
        if "version" not in fields:
            raise ValueError("the tag must contain {version} so each model gets its own tag")
        sample = value.format(model_name="m", version="1", run_id="r", data_md5="d")
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", sample):
            raise ValueError(f"{value!r} does not render to an image tag ([A-Za-z0-9_.-])")
        return value


class NotifyParams(_Section):
    webhook_env: str = "CTFLOWS_SLACK_WEBHOOK_URL"
    secret_block: str | None = "ctflows-slack-webhook"
    retries: int = Field(2, ge=0, le=10)

    _env = field_validator("webhook_env")(classmethod(lambda cls, v: _env_name(v)))
    _block = field_validator("secret_block")(classmethod(lambda cls, v: _block_name(v)))

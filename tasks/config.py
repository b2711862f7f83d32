"""Typed view of ``params.yaml``: loaded once, validated with errors that name the offending key."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from tasks.gates.fairness import FairnessParams

MetricName = Literal[
    "roc_auc",
    "pr_auc",
    "f1",
    "accuracy",
    "log_loss",
    "brier",
    "macro_f1",
    "weighted_f1",
    "rmse",
    "mae",
    "r2",
]


class ConfigError(ValueError):
    """``params.yaml`` is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$")
_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")
TRACKING_SCHEMES = frozenset(
    {"http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "uc"}
)


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _block_name(value: str | None) -> str | None:
    if value is not None and not _BLOCK_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a Prefect block name (lowercase letters, digits and dashes)"
        )
    return value


def _event_name(value: str) -> str:
    if not _EVENT_NAME.match(value):
        raise ValueError(f"expected a dotted event name like 'ctflows.data.landed', got {value!r}")
    return value


def project_root(environ: dict[str, str] | None = None) -> Path:
    """Where a relative ``project.state_dir`` lives: ``$CTFLOWS_HOME``, else this checkout."""
    env = os.environ if environ is None else environ
    home = env.get("CTFLOWS_HOME")
    return Path(home).resolve() if home else Path(__file__).resolve().parents[1]


class ProjectParams(_Section):
    state_dir: Path = Path(".ctflows")


class TrainingWindow(_Section):
    """The data versions one training run reads: by default the newest alone.

    ``versions``: the last K distinct data versions of ``data.path`` up to ``data.rev``;
    ``days``: the versions committed within D days before ``data.rev``'s commit. Both set: the
    last K versions, none older than D days. Each version is read through DVC at its own commit.
    """

    versions: int | None = Field(None, ge=1, le=100)
    days: float | None = Field(None, gt=0)

    @property
    def newest_only(self) -> bool:
        return self.versions in (None, 1) and self.days is None


class DataParams(_Section):
    repo: str = "."
    path: str = "data/batch.parquet"
    rev: str = "HEAD"
    label: str
    id_column: str | None = None  # null: the holdout is split on a hash of the whole row
    timestamp_column: str | None = None  # null: no column is kept out of the features as time
    sensitive_column: str | None = None  # null: no fairness gates (said in the gate report)
    numeric_features: list[str] = Field(min_length=0)
    categorical_features: list[str] = Field(min_length=0)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 7
    window: TrainingWindow = TrainingWindow()

    @property
    def features(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    def configured_columns(self) -> dict[str, str]:
        """Every column params name, keyed by the params key that names it."""
        named = {
            "data.label": self.label,
            "data.id_column": self.id_column,
            "data.timestamp_column": self.timestamp_column,
            "data.sensitive_column": self.sensitive_column,
        }
        columns = {key: column for key, column in named.items() if column is not None}
        for key in ("numeric_features", "categorical_features"):
            for i, column in enumerate(getattr(self, key)):
                columns[f"data.{key}[{i}]"] = column
        return columns

    @model_validator(mode="after")
    def _features_disjoint(self) -> DataParams:
        if not self.features:
            raise ValueError("numeric_features and categorical_features are both empty")
        both = set(self.numeric_features) & set(self.categorical_features)
        if both:
            raise ValueError(f"features listed as numeric and categorical: {sorted(both)}")
        roles = [self.label, self.id_column, self.timestamp_column, self.sensitive_column]
        reserved = {c for c in roles if c is not None} & set(self.features)
        if reserved:
            raise ValueError(
                f"label, id, timestamp or sensitive column used as a feature: {sorted(reserved)}"
            )
        return self


class PrepareParams(_Section):
    day: int = Field(1, ge=0)
    rows: int = Field(50_000, gt=0)
    seed: int = 0
    drift: float = Field(0.0, ge=0.0)


class ValidateParams(_Section):
    suite: Path = Path("expectations/churn_batch.json")


class TrainParams(_Section):
    task: Literal["binary", "multiclass", "regression"] = "binary"
    estimator: str = "lightgbm.LGBMClassifier"
    # how features are encoded: auto (by estimator: native categories for LightGBM, ordinal
    # codes for other trees, one-hot + scaling for linear models), native, ordinal, onehot
    preprocessing: Literal["auto", "native", "ordinal", "onehot"] = "auto"
    # local: pandas in the flow's process; dask: LightGBM's Dask estimator on the cluster of
    # the `dask` section (a data version may then be a directory of Parquet parts)
    engine: Literal["local", "dask"] = "local"
    seed: int = 42
    n_jobs: int = Field(2, ge=1)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("estimator")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if "." not in value:
            raise ValueError(
                f"expected an import path like 'lightgbm.LGBMClassifier', got {value!r}"
            )
        import importlib.util

        top = value.split(".")[0]
        if importlib.util.find_spec(top) is None:
            raise ValueError(f"package {top!r} of {value!r} is not installed")
        return value


class DaskParams(_Section):
    """The Dask cluster of ``train.engine: dask``: a scheduler's address, or a local cluster."""

    scheduler: str | None = None  # tcp://host:8786; null: a LocalCluster in the flow's process
    workers: int = Field(2, ge=1)  # local cluster only
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "4GiB"  # per local worker
    connect_timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx)://[^\s/]+", value):
            raise ValueError(f"expected a scheduler address like 'tcp://host:8786', got {value!r}")
        return value


GATE_RENAMES = {
    "size": "split into gates.model_size (max_bytes) and gates.predict_memory (max_peak_bytes)",
    "parity": "renamed gates.prediction_parity",
}


class GateParams(_Section):
    """The promotion policy: shared settings, then one section per gate, keyed by the gate's
    name (see ``tasks/gates/``); every gate optional. ``custom`` lists gates by import path."""

    model_config = ConfigDict(extra="allow", frozen=True)

    primary_metric: MetricName = "roc_auc"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # serving decision threshold
    fail_run_on_reject: bool = False
    custom: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _gate_sections(cls, raw: Any) -> Any:
        """Validate each gate's section with that gate's params model; fill defaults."""
        from tasks.gates.registry import builtin_gates

        if not isinstance(raw, dict):
            return raw
        gates = builtin_gates()
        out = dict(raw)
        for key in set(out) - set(cls.model_fields) - set(gates):
            hint = GATE_RENAMES.get(key) or f"known gates: {sorted(gates)}"
            raise ValueError(f"{key!r} is not a gate ({hint})")
        for name, gate in gates.items():
            value = out.get(name)
            if isinstance(value, BaseModel):
                continue
            try:
                out[name] = gate.Params.model_validate({} if value is None else value)
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in (name, *first["loc"]))
                raise ValueError(f"{key}: {first['msg']}") from exc
        return out

    @field_validator("custom")
    @classmethod
    def _custom_gates(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from tasks.gates.registry import GateLoadError, builtin_gates, validate_custom

        try:
            return validate_custom(value, set(builtin_gates()))
        except GateLoadError as exc:
            raise ValueError(str(exc)) from exc

    def rule(self, name: str) -> BaseModel:
        """The validated params of the built-in gate ``name``."""
        value = (self.model_extra or {}).get(name)
        if not isinstance(value, BaseModel):
            raise KeyError(f"no gate {name!r} in this policy")
        return value

    @property
    def fairness(self) -> FairnessParams:
        """Typed access for other stages (the data stage checks the slice columns exist)."""
        from tasks.gates.fairness import FairnessParams

        rule = self.rule("fairness")
        assert isinstance(rule, FairnessParams)
        return rule

    @property
    def minimums(self) -> dict[str, float]:
        root: dict[str, float] = getattr(self.rule("minimums"), "root", {})
        return root


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


class ScheduleParams(_Section):
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"expected a 5-field cron expression, got {value!r}")
        from prefect.client.schemas.schedules import CronSchedule

        try:  # the parser the served process uses: a bad field fails here, not at 3 a.m.
            CronSchedule(cron=value)
        except ValueError as exc:
            raise ValueError(f"invalid cron expression {value!r}") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class WebhookParams(_Section):
    secret_env: str = "CTFLOWS_WEBHOOK_SECRET"
    secret_block: str | None = "ctflows-webhook-secret"
    tolerance_seconds: int = Field(300, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1)
    request_timeout_seconds: float = Field(10.0, gt=0)  # whole request: headers, body, answer
    max_in_flight: int = Field(64, ge=1)  # connections served at once; more get 503

    _env = field_validator("secret_env")(classmethod(lambda cls, v: _env_name(v)))
    _block = field_validator("secret_block")(classmethod(lambda cls, v: _block_name(v)))


class TriggerParams(_Section):
    """How retraining starts: the schedule, the data-landed event, the webhook."""

    schedule: ScheduleParams = ScheduleParams()
    event: str = "ctflows.data.landed"
    webhook: WebhookParams = WebhookParams()
    poll_seconds: int = Field(1, ge=1)  # how often `make serve` looks for scheduled runs
    repair_seconds: int = Field(60, ge=5)  # how often flow `repair` looks for a killed deploy

    _event = field_validator("event")(classmethod(lambda cls, v: _event_name(v)))


class DriftParams(_Section):
    schedule: ScheduleParams = ScheduleParams(cron="0 6 * * *")
    ks_pvalue: float = Field(0.001, gt=0, lt=1)  # after the multiple-testing correction
    chi2_pvalue: float = Field(0.001, gt=0, lt=1)
    # over all features tested at once: holm (family-wise), bonferroni, bh (false discovery rate)
    correction: Literal["holm", "bonferroni", "bh", "none"] = "holm"
    min_ks_statistic: float = Field(0.05, ge=0, le=1)  # effect floor: KS distance D
    min_cramers_v: float = Field(0.05, ge=0, le=1)  # effect floor: categorical shift
    psi_threshold: float = Field(0.2, gt=0)
    max_null_increase: float = Field(0.05, ge=0, le=1)
    min_drifted_features: int = Field(1, ge=1)
    event: str = "ctflows.drift.detected"

    _event = field_validator("event")(classmethod(lambda cls, v: _event_name(v)))


class TimeoutsParams(_Section):
    """Deadline of every call to an external service, in seconds (see tasks/services.py)."""

    mlflow: float = Field(10.0, gt=0, le=600)  # one HTTP request to the tracking server
    mlflow_retries: int = Field(2, ge=0, le=10)  # MLflow's own default retries for minutes
    dvc: float = Field(600.0, gt=0)  # resolving and fetching one data version
    kubernetes: float = Field(10.0, gt=0, le=600)  # one Kubernetes API request
    prefect: float = Field(10.0, gt=0, le=600)  # one Prefect API request
    slack: float = Field(10.0, gt=0, le=600)  # one Slack post


class ResourceParams(_Section):
    """Kubernetes resource quantities for one flow-run Job (``500m``, ``2``, ``4Gi``)."""

    cpu_request: str | None = "1"
    cpu_limit: str | None = "2"
    memory_request: str | None = "2Gi"
    memory_limit: str | None = "4Gi"

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?", value):
            raise ValueError(
                f"expected a Kubernetes quantity like '500m', '2' or '4Gi', got {value!r}"
            )
        return value


class WorkPoolParams(_Section):
    """Where deployments run: `process` (`make serve`, a process worker) or Kubernetes Jobs."""

    name: str = "ctflows-kubernetes"
    image: str = "registry.example.com/ctflows-flow@sha256:" + "0" * 64
    namespace: str = "ctflows"
    service_account: str = "ctflows-deployer"
    secrets: list[str] = Field(default_factory=lambda: ["ctflows-secrets"])
    resources: ResourceParams = ResourceParams()
    finished_job_ttl_seconds: int | None = Field(3600, ge=0)

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if "@sha256:" not in value:
            raise ValueError(
                f"expected an image pinned by digest (repository@sha256:<64 hex>), got {value!r}"
            )
        return value


class LabelSourceParams(_Section):
    """Where ground truth lands, later than the predictions: Parquet rows of id, label, time."""

    url: str | None = None  # a Parquet file, folder or glob at any fsspec URL; null: no labels
    id_column: str = "id"
    label_column: str = "label"
    time_column: str = "time"
    key: str = "prediction_id"  # log column, or a field of the logged records (customer_id)


class MonitorParams(_Section):
    """Flow `production-monitor`: the inference log against the champion's training rows."""

    schedule: ScheduleParams = ScheduleParams(cron="0 * * * *")
    log_url: str | None = None  # null: <state_dir>/inference-log (the serving app's default)
    window_hours: float = Field(24.0, gt=0)
    min_rows: int = Field(200, ge=1)  # fewer predictions in the window: drift not judged
    reference_rows: int = Field(50_000, ge=100)  # sample of the champion's training rows
    score_psi_threshold: float = Field(0.2, gt=0)
    score_ks_pvalue: float = Field(0.001, gt=0, lt=1)
    max_metric_drop: float = Field(0.05, ge=0)  # holdout minus live, significant at alpha
    min_labelled_rows: int = Field(100, ge=1)
    resamples: int = Field(500, ge=50, le=100_000)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    seed: int = 0
    labels: LabelSourceParams = LabelSourceParams()


class Params(_Section):
    project: ProjectParams = ProjectParams()
    data: DataParams
    prepare: PrepareParams = PrepareParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    gates: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    mlflow: MlflowParams = MlflowParams()
    deploy: DeployParams
    image: ImageParams = ImageParams()
    notify: NotifyParams = NotifyParams()
    triggers: TriggerParams = TriggerParams()
    drift: DriftParams = DriftParams()
    workpool: WorkPoolParams = WorkPoolParams()
    dask: DaskParams = DaskParams()
    monitor: MonitorParams = MonitorParams()
    timeouts: TimeoutsParams = TimeoutsParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _primary_metric_by_task(cls, raw: Any) -> Any:
        """Without ``gates.primary_metric``, the task's own default (roc_auc, log_loss, rmse)."""
        from tasks.metrics import DEFAULT_PRIMARY

        if not isinstance(raw, dict):
            return raw
        task = (raw.get("train") or {}).get("task", "binary")
        gates = raw.get("gates") or {}
        if isinstance(gates, dict) and "primary_metric" not in gates and task in DEFAULT_PRIMARY:
            raw = {**raw, "gates": {**gates, "primary_metric": DEFAULT_PRIMARY[task]}}
        return raw

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> Params:
        from tasks.metrics import check_metric

        task = self.train.task
        keys: list[tuple[str, str]] = [("gates.primary_metric", self.gates.primary_metric)]
        keys += [(f"gates.minimums.{m}", m) for m in self.gates.minimums]
        for key, metric in keys:
            try:
                check_metric(metric, task)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc} (train.task is {task})") from exc
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_sensitive_column(cls, raw: Any) -> Any:
        """``data.sensitive_column`` is the one source; the fairness gates read it from there."""
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            return raw
        gates = raw.get("gates") or {}
        if not isinstance(gates, dict):
            return raw
        fairness = gates.get("fairness") or {}
        if not isinstance(fairness, dict):
            return raw
        if "sensitive_column" in fairness:
            raise ValueError(
                "gates.fairness.sensitive_column is no longer read: set data.sensitive_column "
                "(one source for the column kept out of the features and used by fairness gates)"
            )
        sensitive = raw["data"].get("sensitive_column")
        return {**raw, "gates": {**gates, "fairness": {**fairness, "sensitive_column": sensitive}}}

    @property
    def state_dir(self) -> Path:
        return self.project.state_dir

    def params_hash(self) -> str:
        """Hash of everything that shapes a candidate: data contract, suite, training and gates."""
        relevant = self.model_dump(mode="json", include={"data", "train", "gates"}, by_alias=True)
        relevant["data"] = {k: v for k, v in relevant["data"].items() if k not in {"repo", "rev"}}
        shadow = relevant["gates"].get("shadow")
        if isinstance(shadow, dict):  # where production's log lives is not a training param
            relevant["gates"]["shadow"] = {
                k: v for k, v in shadow.items() if k not in {"log_url", "labels"}
            }
        suite = self.validate_.suite
        relevant["suite"] = hashlib.sha256(suite.read_bytes()).hexdigest() if suite.exists() else ""
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; relative paths stay relative to the caller's cwd."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_error(exc)}") from exc


def _read_mapping(file: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{file} not found: run from the project root or pass its path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a mapping of sections, found {type(raw).__name__}")
    return raw


# (section, key) of the values that are paths, made absolute against the file that sets them.
# Not ``project.state_dir``: that one is relative to the project root (see _resolve_paths),
# so every model's file shares one state dir.
_PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("data", "repo"),
    ("validate", "suite"),
    ("deploy", "kubeconfig"),
)


def _absolute_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = dict(raw)
    for section, key in _PATH_KEYS:
        values = out.get(section)
        if not isinstance(values, dict) or not isinstance(values.get(key), str):
            continue
        value = values[key]
        if "://" in value or Path(value).is_absolute():
            continue
        out[section] = {**values, key: str(folder / value)}
    return out


def merge_sections(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_raw_params(file: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The mapping of ``file`` on top of the file its ``extends:`` key names (relative to it).

    Returns the merged mapping and the folder of the first file of the chain (the project
    root): paths left relative, such as defaults, resolve against it.
    """
    file = file.resolve()
    if file in _chain:
        raise ConfigError(
            f"{file}: `extends` loops back to itself ({' -> '.join(map(str, _chain))})"
        )
    raw = _read_mapping(file)
    parent = raw.pop("extends", None)
    raw = _absolute_paths(raw, file.parent)
    if parent is None:
        return raw, file.parent
    if not isinstance(parent, str):
        raise ConfigError(f"{file}: extends must be the path of a params file, got {parent!r}")
    base, root = read_raw_params(file.parent / parent, (*_chain, file))
    return merge_sections(base, raw), root


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Load and validate ``params.yaml``; relative paths in it are resolved against its folder.

    A file with ``extends: <path>`` holds only what differs from that file (one model of
    several sharing the project's defaults); sections merge key by key.
    """
    file = Path(path)
    raw, root = read_raw_params(file)
    params = parse_params(raw, str(file))
    return _production_sources(_resolve_paths(params, root))


def _production_sources(params: Params) -> Params:
    """The `shadow` gate reads the production monitor's inference log and labels unless its
    own section names others."""
    rule = (params.gates.model_extra or {}).get("shadow")
    if rule is None or not hasattr(rule, "log_url"):
        return params
    update = {
        "log_url": rule.log_url
        or params.monitor.log_url
        or str(params.state_dir / "inference-log"),
        "labels": rule.labels or params.monitor.labels,
    }
    gates = params.gates.model_copy(update={"shadow": rule.model_copy(update=update)})
    return params.model_copy(update={"gates": gates})


def _resolve_paths(params: Params, root: Path) -> Params:
    """Paths in the file are relative to its folder, except ``project.state_dir``: relative to
    the project root (:func:`project_root`), so every params file of one checkout shares one
    MLflow store, Prefect home and outbox instead of creating a second one next to itself."""

    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else root / p

    state_dir = params.project.state_dir
    if not state_dir.is_absolute():
        state_dir = project_root() / state_dir

    repo = params.data.repo
    if "://" not in repo and not Path(repo).is_absolute():
        repo = str(root / repo)
    kubeconfig = params.deploy.kubeconfig
    return params.model_copy(
        update={
            "project": params.project.model_copy(update={"state_dir": state_dir}),
            "data": params.data.model_copy(update={"repo": repo}),
            "validate_": params.validate_.model_copy(
                update={"suite": resolve(params.validate_.suite)}
            ),
            "deploy": params.deploy.model_copy(
                update={"kubeconfig": resolve(kubeconfig) if kubeconfig else None}
            ),
        }
    )

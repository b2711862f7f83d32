"""Typed view of ``params.yaml``: loaded once, validated with errors that name the offending key."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MetricName = Literal["roc_auc", "pr_auc", "f1", "accuracy", "log_loss", "brier"]
IMAGE_TEMPLATE_FIELDS = frozenset({"model_name", "version", "run_id", "data_md5"})


class ConfigError(ValueError):
    """``params.yaml`` is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectParams(_Section):
    state_dir: Path = Path(".ctflows")


class DataParams(_Section):
    repo: str = "."
    path: str = "data/batch.parquet"
    rev: str = "HEAD"
    label: str
    id_column: str
    timestamp_column: str
    sensitive_column: str
    numeric_features: list[str] = Field(min_length=0)
    categorical_features: list[str] = Field(min_length=0)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 7

    @property
    def features(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    @model_validator(mode="after")
    def _features_disjoint(self) -> DataParams:
        if not self.features:
            raise ValueError("numeric_features and categorical_features are both empty")
        both = set(self.numeric_features) & set(self.categorical_features)
        if both:
            raise ValueError(f"features listed as numeric and categorical: {sorted(both)}")
        reserved = {self.label, self.id_column, self.timestamp_column} & set(self.features)
        if reserved:
            raise ValueError(f"label, id or timestamp column used as a feature: {sorted(reserved)}")
        return self


class PrepareParams(_Section):
    day: int = Field(1, ge=0)
    rows: int = Field(50_000, gt=0)
    seed: int = 0
    drift: float = Field(0.0, ge=0.0)


class ValidateParams(_Section):
    suite: Path = Path("expectations/churn_batch.json")


class TrainParams(_Section):
    estimator: str = "lightgbm.LGBMClassifier"
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
        return value


class NoRegressionPolicy(_Section):
    enabled: bool = True
    tolerance: float = Field(0.002, ge=0.0)


class SignificancePolicy(_Section):
    enabled: bool = True
    min_improvement: float = Field(0.0, ge=0.0)
    resamples: int = Field(1000, ge=50, le=100_000)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    seed: int = 0


class LatencyPolicy(_Section):
    enabled: bool = True
    batch_size: int = Field(1000, ge=1)
    repeats: int = Field(30, ge=5)
    warmup: int = Field(3, ge=0)
    max_p95_ms: float | None = Field(250.0, gt=0)
    max_ratio: float | None = Field(1.5, gt=0)


class SizePolicy(_Section):
    enabled: bool = True
    max_model_bytes: int | None = Field(50_000_000, gt=0)
    max_predict_peak_bytes: int | None = Field(512_000_000, gt=0)


class FairnessPolicy(_Section):
    enabled: bool = True
    sensitive_column: str = "gender"
    slice_columns: list[str] = Field(default_factory=list)
    min_slice_rows: int = Field(50, ge=1)
    max_slice_gap: float | None = Field(0.15, ge=0)
    max_parity_difference: float | None = Field(0.2, ge=0)
    max_gap_widening: float | None = Field(0.02, ge=0)


class ParityPolicy(_Section):
    enabled: bool = True
    max_psi: float | None = Field(0.25, ge=0)
    max_flip_rate: float | None = Field(0.2, ge=0, le=1)


class ReproducibilityPolicy(_Section):
    enabled: bool = False
    tolerance: float = Field(0.0, ge=0)


class GateParams(_Section):
    """The promotion policy: every gate optional, each with its thresholds."""

    primary_metric: MetricName = "roc_auc"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # serving decision threshold
    fail_run_on_reject: bool = False
    minimums: dict[MetricName, float] = Field(default_factory=dict)
    no_regression: NoRegressionPolicy = NoRegressionPolicy()
    significance: SignificancePolicy = SignificancePolicy()
    latency: LatencyPolicy = LatencyPolicy()
    size: SizePolicy = SizePolicy()
    fairness: FairnessPolicy = FairnessPolicy()
    parity: ParityPolicy = ParityPolicy()
    reproducibility: ReproducibilityPolicy = ReproducibilityPolicy()


class RegistryParams(_Section):
    model_name: str = "churn-classifier"
    alias: str = "champion"


class MlflowParams(_Section):
    tracking_uri: str | None = None
    experiment: str = "continuous-training"


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
    image_template: str
    kubeconfig: Path | None = None
    context: str | None = None

    @field_validator("image_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = fields - IMAGE_TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown field(s) {sorted(unknown)}; allowed: {sorted(IMAGE_TEMPLATE_FIELDS)}"
            )
        if "version" not in fields:
            raise ValueError("the template must contain {version} so each model gets its own image")
        return value


class NotifyParams(_Section):
    webhook_env: str = "CTFLOWS_SLACK_WEBHOOK_URL"
    secret_block: str | None = "ctflows-slack-webhook"
    retries: int = Field(2, ge=0)


class ScheduleParams(_Section):
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"expected a 5-field cron expression, got {value!r}")
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


class TriggerParams(_Section):
    """How retraining starts: the schedule, the data-landed event, the webhook."""

    schedule: ScheduleParams = ScheduleParams()
    event: str = "ctflows.data.landed"
    webhook: WebhookParams = WebhookParams()
    poll_seconds: int = Field(1, ge=1)  # how often `make serve` looks for scheduled runs


class DriftParams(_Section):
    schedule: ScheduleParams = ScheduleParams(cron="0 6 * * *")
    ks_pvalue: float = Field(0.001, gt=0, lt=1)
    chi2_pvalue: float = Field(0.001, gt=0, lt=1)
    psi_threshold: float = Field(0.2, gt=0)
    max_null_increase: float = Field(0.05, ge=0, le=1)
    min_drifted_features: int = Field(1, ge=1)
    event: str = "ctflows.drift.detected"


class LabelSourceParams(_Section):
    """Where ground truth lands, later than the predictions: Parquet rows of id, label, time."""

    url: str | None = None  # a Parquet file, folder or glob at any fsspec URL; null: no labels
    id_column: str = "id"
    label_column: str = "label"
    time_column: str = "time"
    key: str = "prediction_id"  # log column, or a field of the logged records (customer_id)


class ShadowParams(_Section):
    """The candidate replays the last logged production requests offline (gate `shadow`)."""

    enabled: bool = True
    rows: int = Field(5_000, ge=1)  # the last N logged predictions of the champion
    min_rows: int = Field(500, ge=1)  # fewer logged: the gate is skipped, and says so
    max_flip_rate: float | None = Field(0.1, ge=0, le=1)
    max_score_psi: float | None = Field(0.25, ge=0)
    max_p95_ms: float | None = Field(250.0, gt=0)  # at the batch sizes production sent
    latency_repeats: int = Field(10, ge=1)
    min_labelled_rows: int = Field(100, ge=1)  # for the paired metric comparison
    tolerance: float = Field(0.002, ge=0)  # how far the gain's upper bound may be below 0


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
    shadow: ShadowParams = ShadowParams()


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
    notify: NotifyParams = NotifyParams()
    triggers: TriggerParams = TriggerParams()
    drift: DriftParams = DriftParams()
    monitor: MonitorParams = MonitorParams()
    workpool: WorkPoolParams = WorkPoolParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def state_dir(self) -> Path:
        return self.project.state_dir

    def params_hash(self) -> str:
        """Hash of everything that shapes a candidate: data contract, suite, training and gates."""
        relevant = self.model_dump(mode="json", include={"data", "train", "gates"}, by_alias=True)
        relevant["data"] = {k: v for k, v in relevant["data"].items() if k not in {"repo", "rev"}}
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


# (section, key) of the values that are paths, made absolute against the file that sets them
_PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("project", "state_dir"),
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
    return _resolve_paths(params, root)


def _resolve_paths(params: Params, root: Path) -> Params:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else root / p

    repo = params.data.repo
    if "://" not in repo and not Path(repo).is_absolute():
        repo = str(root / repo)
    kubeconfig = params.deploy.kubeconfig
    return params.model_copy(
        update={
            "project": params.project.model_copy(
                update={"state_dir": resolve(params.project.state_dir)}
            ),
            "data": params.data.model_copy(update={"repo": repo}),
            "validate_": params.validate_.model_copy(
                update={"suite": resolve(params.validate_.suite)}
            ),
            "deploy": params.deploy.model_copy(
                update={"kubeconfig": resolve(kubeconfig) if kubeconfig else None}
            ),
        }
    )

"""Typed view of ``params.yaml``: loaded once, validated with errors that name the offending key."""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    task: Literal["binary", "multiclass", "regression"] = "binary"
    estimator: str = "lightgbm.LGBMClassifier"
    # how features are encoded: auto (by estimator: native categories for LightGBM, ordinal
    # codes for other trees, one-hot + scaling for linear models), native, ordinal, onehot
    preprocessing: Literal["auto", "native", "ordinal", "onehot"] = "auto"
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
    def minimums(self) -> dict[str, float]:
        root: dict[str, float] = getattr(self.rule("minimums"), "root", {})
        return root


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


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Load and validate ``params.yaml``; relative paths in it are resolved against its folder."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{file} not found: run from the project root or pass its path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a mapping of sections, found {type(raw).__name__}")
    params = parse_params(raw, str(file))
    return _resolve_paths(params, file.resolve().parent)


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

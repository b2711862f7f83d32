"""How runs start and what watches production: schedules, webhook, drift, timeouts, the
Kubernetes work pool, the production monitor."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

if TYPE_CHECKING:
    pass
from tasks.config.base import _block_name, _env_name, _event_name, _Section


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
    # how often `make serve` looks for due runs; a new run wakes it at once (a flow-run event),
    # so this is the delay of scheduled runs and the fallback if events do not arrive
    poll_seconds: float = Field(2.0, ge=0.1)
    repair_seconds: int = Field(30, ge=5)  # how often flow `repair` looks for a killed deploy

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


MAX_WINDOW_HOURS = 24 * 366 * 10  # ten years: a window start any datetime can hold


class MonitorParams(_Section):
    """Flow `production-monitor`: the inference log against the champion's training rows."""

    schedule: ScheduleParams = ScheduleParams(cron="0 * * * *")
    log_url: str | None = None  # null: <state_dir>/inference-log (the serving app's default)
    window_hours: float = Field(24.0, gt=0, le=MAX_WINDOW_HOURS, allow_inf_nan=False)
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

"""Typed view of ``params.yaml``: loaded once by :func:`load_params`, validated with errors that
name the offending key. One module per group of sections; everything is importable from here."""

from __future__ import annotations

from tasks.config.base import (
    TRACKING_SCHEMES,
    ConfigError,
    MetricName,
    project_root,
)
from tasks.config.gates import (
    GATE_RENAMES,
    GateParams,
)
from tasks.config.operations import (
    DriftParams,
    LabelSourceParams,
    MonitorParams,
    ResourceParams,
    ScheduleParams,
    TimeoutsParams,
    TriggerParams,
    WebhookParams,
    WorkPoolParams,
)
from tasks.config.overlay import merge_sections
from tasks.config.params import (
    Params,
    load_params,
    parse_params,
    read_raw_params,
)
from tasks.config.shipping import (
    IMAGE_TAG_FIELDS,
    CanaryParams,
    DeployParams,
    ImageParams,
    MlflowParams,
    NotifyParams,
    RegistryParams,
)
from tasks.config.stages import (
    DaskParams,
    DataParams,
    PrepareParams,
    ProjectParams,
    TrainingWindow,
    TrainParams,
    ValidateParams,
)

__all__ = [
    "GATE_RENAMES",
    "IMAGE_TAG_FIELDS",
    "TRACKING_SCHEMES",
    "CanaryParams",
    "ConfigError",
    "DaskParams",
    "DataParams",
    "DeployParams",
    "DriftParams",
    "GateParams",
    "ImageParams",
    "LabelSourceParams",
    "MetricName",
    "MlflowParams",
    "MonitorParams",
    "NotifyParams",
    "Params",
    "PrepareParams",
    "ProjectParams",
    "RegistryParams",
    "ResourceParams",
    "ScheduleParams",
    "TimeoutsParams",
    "TrainParams",
    "TrainingWindow",
    "TriggerParams",
    "ValidateParams",
    "WebhookParams",
    "WorkPoolParams",
    "load_params",
    "merge_sections",
    "parse_params",
    "project_root",
    "read_raw_params",
]

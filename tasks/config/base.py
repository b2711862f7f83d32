"""Shared pieces of the params models: the section base class, name checks, the project root."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from tasks.errors import CtflowsError, ErrorKind

if TYPE_CHECKING:
    pass


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


class ConfigError(CtflowsError, ValueError):
    """``params.yaml`` is missing, unreadable or invalid; the message names the key."""

    kind = ErrorKind.BAD_INPUT


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
    return Path(home).resolve() if home else Path(__file__).resolve().parents[2]

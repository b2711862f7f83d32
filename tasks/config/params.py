"""``Params``, the whole of ``params.yaml``, and how it is loaded: merged, validated, paths
resolved."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    pass
from tasks.config.base import ConfigError, _Section, project_root
from tasks.config.defaults import DefaultsError, with_task_defaults
from tasks.config.gates import GateParams
from tasks.config.operations import (
    DriftParams,
    MonitorParams,
    TimeoutsParams,
    TriggerParams,
    WorkPoolParams,
)
from tasks.config.overlay import ParamsLoader, merge_overlay
from tasks.config.reading import load_yaml_bounded, read_bounded
from tasks.config.shipping import (
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
    TrainParams,
    ValidateParams,
)


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
    def _gate_defaults_by_task(cls, raw: Any) -> Any:
        """What the gate policy leaves out follows the task (tasks/config/defaults.py)."""
        if not isinstance(raw, dict):
            return raw
        try:
            return with_task_defaults(raw)
        except DefaultsError as exc:
            raise ValueError(str(exc)) from exc

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
    text = read_bounded(file)
    try:
        raw = load_yaml_bounded(file, text, loader_class=ParamsLoader)
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
        out[section] = {**values, key: os.path.normpath(folder / value)}
    return out


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
    return merge_overlay(base, raw), root


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Load and validate ``params.yaml``; relative paths in it are resolved against its folder.

    A file with ``extends: <path>`` holds only what differs from that file (one model of
    several sharing the project's defaults); sections merge key by key, except what the
    overlay replaces (``!replace``, ``{}``, another estimator or task: tasks/config/overlay.py).
    """
    file = Path(path)
    raw, root = read_raw_params(file)
    params = parse_params(raw, str(file))
    return _production_sources(_resolve_paths(params, root))


def _production_sources(params: Params) -> Params:
    """The `shadow` gate reads the production monitor's inference log and labels unless its
    own section names others, and only this model's records of it."""
    rule = (params.gates.model_extra or {}).get("shadow")
    if rule is None or not hasattr(rule, "log_url"):
        return params
    update = {
        "log_url": rule.log_url
        or params.monitor.log_url
        or str(params.state_dir / "inference-log"),
        "labels": rule.labels or params.monitor.labels,
        "model_name": rule.model_name or params.registry.model_name,
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

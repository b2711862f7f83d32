"""The models one installation trains: the root params.yaml, or one folder each in models.d/.

    params.yaml                  shared defaults (and the only model while models.d/ is empty)
    models.d/<name>/params.yaml  `extends: ../../params.yaml` plus what differs for <name>
    models.d/<name>/suite.json   its Great Expectations suite (written by `ctflows init`)

models/ stays the output folder of the `dvc repro` train stage (models/model.pkl).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.config import ConfigError, Params, load_params
from tasks.deploy import targets
from tasks.errors import CtflowsError, ErrorKind

log = logging.getLogger(__name__)

MODELS_DIR = "models.d"
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class UnknownModel(CtflowsError, LookupError):
    """A model name the installation does not declare; the message lists the known ones."""

    kind = ErrorKind.BAD_INPUT

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"unknown model {name!r}; known models: {', '.join(known) or '(none)'}")


@dataclass(frozen=True)
class Model:
    """One declared model: its name (in deployment names and on the command line) and params.

    ``error``: why its params do not load (the model is listed, reported, and left out of
    what serves and routes; the other models keep working)."""

    name: str
    params_file: Path
    error: str | None = None

    def params(self) -> Params:
        if self.error is not None:
            raise ConfigError(self.error)
        return load_params(self.params_file)


def working(models: list[Model]) -> list[Model]:
    """The models whose params load; each broken one is logged with its error."""
    for model in models:
        if model.error is not None:
            log.error("model %s left out: %s", model.name, model.error)
    return [m for m in models if m.error is None]


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ConfigError(
            f"model name {name!r}: use lowercase letters, digits and dashes (at most 63), "
            "as in Kubernetes and Prefect deployment names"
        )
    return name


def discover(root: Path) -> list[Model]:
    """The models declared under ``root``, by name; each params file is loaded and checked.

    Two models may not share a registered model name or any Kubernetes Deployment either may
    patch (a canary's included): they would move each other's champion or replace each
    other's pods. A model of models.d/ whose params do not load is returned with its
    ``error``, not raised: one broken overlay does not take the others down (the root
    params.yaml alone, when it is the only model, raises).
    """
    root = root.resolve()
    folder = root / MODELS_DIR
    files = sorted(folder.glob("*/params.yaml")) if folder.is_dir() else []
    if not files:
        base = root / "params.yaml"
        return [Model(check_name(load_params(base).registry.model_name), base)]
    models = []
    loaded: dict[str, Params] = {}
    for file in files:
        name = file.parent.name
        try:
            loaded[check_name(name)] = load_params(file)
            models.append(Model(name, file))
        except CtflowsError as exc:
            models.append(Model(name, file, str(exc)))
    owners: dict[tuple[str, str], tuple[str, str]] = {}
    for model in models:
        if model.error is not None:
            continue
        params = loaded[model.name]
        claims = [("registry.model_name", "registered model", params.registry.model_name)]
        claims += patched_deployments(params)
        for setting, kind, name in claims:
            key = (kind, name)
            if key in owners:
                owner, owner_setting = owners[key]
                what = f"{setting} {name!r}"
                if owner_setting != setting:
                    what = (
                        f"the {kind} {name!r} ({owner}'s {owner_setting}, {model.name}'s {setting})"
                    )
                raise ConfigError(
                    f"models {owner!r} and {model.name!r} share {what}; give each model its own"
                )
            owners[key] = (model.name, setting)
    return models


def patched_deployments(params: Params) -> list[tuple[str, str, str]]:
    """(the setting naming it, "Kubernetes Deployment", namespace/name) of every Deployment a
    promotion or rollback of this model patches: its own and, with the canary strategy, the
    canary's (``deploy.deployment`` + ``deploy.canary.suffix``)."""
    deploy = params.deploy
    settings = {deploy.deployment: "deploy.deployment"}
    names = targets(deploy)
    return [
        (
            settings.get(name, "deploy.deployment + deploy.canary.suffix"),
            "Kubernetes Deployment",
            f"{deploy.namespace}/{name}",
        )
        for name in names
    ]


def find(root: Path, name: str) -> Model:
    models = discover(root)
    for model in models:
        if model.name == name:
            return model
    raise UnknownModel(name, [m.name for m in models])


def model_for_data_path(models: list[Model], path: str) -> Model | None:
    """The model whose ``data.path`` is ``path`` (the webhook's routing)."""
    for model in working(models):
        if model.params().data.path == path:
            return model
    return None


def deployment_name(model: str, kind: str) -> str:
    """The served deployment name of one of a model's triggers: ``<model>-<kind>``."""
    return f"{model}-{kind}"

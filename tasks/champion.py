"""The champion: the version the alias points at, its model and data, and moving the alias."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import Params
from tasks.data import DataVersion, repo_from_lineage
from tasks.deploy import ModelIdentity
from tasks.train import TrackingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """The model the alias points at now."""

    model: Any
    version: str
    run_id: str | None


def move_alias(model_name: str, alias: str, version: str | None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if version:
        client.set_registered_model_alias(model_name, alias, version)
    else:
        client.delete_registered_model_alias(model_name, alias)


def version_identity(model_name: str, version: str) -> ModelIdentity:
    """The identity of a registered version, from its run and tags."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient().get_model_version(model_name, version)
    except MlflowException as exc:
        raise TrackingError(f"{model_name} has no version {version!r}: {exc}") from exc
    return ModelIdentity(
        model_name,
        str(mv.version),
        str(mv.run_id),
        mv.tags.get("ct.data_md5", ""),
        mv.tags.get("ct.image", ""),  # recorded by tasks.image: redeployed without a rebuild
        mv.tags.get("ct.image_digest", ""),
        mv.tags.get("ct.image_kind", ""),
    )


def current_champion_version(model_name: str, alias: str) -> str | None:
    """The version the alias points at, or None when there is no such model or alias."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise TrackingError(f"cannot read alias {alias!r} of {model_name!r}: {exc}") from exc


_loaded: dict[tuple[str, str], Any] = {}


def load_champion(model_name: str, alias: str) -> Champion | None:
    """Load the champion; the loaded model is kept per version in a warm process."""
    import mlflow
    from mlflow.tracking import MlflowClient

    version = current_champion_version(model_name, alias)
    if version is None:
        return None
    key = (mlflow.get_tracking_uri() + model_name, version)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
    run_id = MlflowClient().get_model_version(model_name, version).run_id
    return Champion(_loaded[key], version, run_id)


@task(name="load-champion", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def get_champion(params: Params) -> Champion | None:
    champion = load_champion(params.registry.model_name, params.registry.alias)
    if champion is None:
        get_run_logger().info(
            "no @%s yet for %s", params.registry.alias, params.registry.model_name
        )
    else:
        get_run_logger().info(
            "champion %s v%s (run %s)",
            params.registry.model_name,
            champion.version,
            champion.run_id,
        )
    return champion


@task(name="champion-data", cache_policy=NONE)
def champion_data_version(params: Params) -> DataVersion | None:
    """The data version the champion was trained on, from its run's lineage tags."""
    from mlflow.tracking import MlflowClient

    version = current_champion_version(params.registry.model_name, params.registry.alias)
    if version is None:
        return None
    client = MlflowClient()
    run_id = str(client.get_model_version(params.registry.model_name, version).run_id)
    tags = client.get_run(run_id).data.tags
    try:
        return DataVersion(
            repo_from_lineage(tags["ct.data_repo"], params),
            tags["ct.data_path"],
            tags["ct.data_rev"],
            tags["ct.data_md5"],
        )
    except KeyError as exc:
        raise TrackingError(f"champion v{version} (run {run_id}) lacks lineage tag {exc}") from exc

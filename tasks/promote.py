"""Stage `promote`: register the candidate and move the `champion` alias, restorably."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import Params
from tasks.data import DataVersion
from tasks.train import TrackingError, TrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """The model the alias points at now."""

    model: Any
    version: str
    run_id: str | None


@dataclass(frozen=True)
class Promotion:
    model_name: str
    alias: str
    version: str
    previous_version: str | None
    run_id: str
    data_md5: str


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


def register_and_promote(trained: TrainedModel, params: Params) -> Promotion:
    """Register the candidate and point the alias at it; the old version is kept in tags."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name, alias = params.registry.model_name, params.registry.alias
    previous = current_champion_version(name, alias)
    client = MlflowClient()
    mv = mlflow.register_model(trained.model_uri, name, await_registration_for=0)
    version = str(mv.version)
    client.set_model_version_tag(name, version, "ct.data_md5", trained.data_md5)
    client.set_model_version_tag(name, version, "ct.previous_champion", previous or "")
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, "ct.previous_champion", previous or "")
    client.set_tag(trained.run_id, "ct.model_version", version)
    return Promotion(name, alias, version, previous, trained.run_id, trained.data_md5)


def restore_alias(promotion: Promotion) -> None:
    """Put the alias back where it was before ``promotion`` (or remove it if there was none)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if promotion.previous_version:
        client.set_registered_model_alias(
            promotion.model_name, promotion.alias, promotion.previous_version
        )
    else:
        client.delete_registered_model_alias(promotion.model_name, promotion.alias)
    client.set_tag(promotion.run_id, "ct.rolled_back", "true")


@task(name="promote-model", cache_policy=NONE)
def promote_model(trained: TrainedModel, params: Params) -> Promotion:
    logger = get_run_logger()
    promotion = register_and_promote(trained, params)
    logger.info(
        "promoted %s v%s to @%s (previous %s) md5=%s run_id=%s",
        promotion.model_name,
        promotion.version,
        promotion.alias,
        promotion.previous_version or "none",
        promotion.data_md5[:10],
        promotion.run_id,
    )
    return promotion


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
            tags["ct.data_repo"], tags["ct.data_path"], tags["ct.data_rev"], tags["ct.data_md5"]
        )
    except KeyError as exc:
        raise TrackingError(f"champion v{version} (run {run_id}) lacks lineage tag {exc}") from exc


@task(name="restore-champion", cache_policy=NONE)
def restore_champion(promotion: Promotion) -> None:
    get_run_logger().warning(
        "restoring @%s of %s to v%s after a failed deploy",
        promotion.alias,
        promotion.model_name,
        promotion.previous_version or "(none)",
    )
    restore_alias(promotion)

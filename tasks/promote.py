"""Stage `promote`: register the candidate and move the `champion` alias, restorably.

The alias moves only after a journal (tasks.journal) records what to put back; a failed deploy
restores the champion from it, and a rollback is journaled the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.champion import current_champion_version, move_alias, version_identity
from tasks.cluster import PodTemplate
from tasks.config import Params
from tasks.deploy import ModelIdentity
from tasks.errors import CtflowsError, ErrorKind
from tasks.journal import clear_journal, recover, write_journal
from tasks.train import TrainedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    model_name: str
    alias: str
    version: str
    previous_version: str | None
    run_id: str
    data_md5: str
    image: str = ""
    image_digest: str = ""
    image_kind: str = ""

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            self.model_name,
            self.version,
            self.run_id,
            self.data_md5,
            self.image,
            self.image_digest,
            self.image_kind,
        )


def register_version(trained: TrainedModel, params: Params) -> str:
    """Register the candidate as a new version (no alias yet), so its image can be built."""
    import mlflow

    name = params.registry.model_name
    mv = mlflow.register_model(trained.model_uri, name, await_registration_for=0)
    return str(mv.version)


def register_and_promote(
    trained: TrainedModel,
    params: Params,
    templates: dict[str, PodTemplate],
    registered: str | None = None,
) -> Promotion:
    """Register the candidate (unless ``registered``) and point the alias at it; the old
    version is kept in tags, and a journal of what runs now is written first, for recovery
    after a crash."""
    from mlflow.tracking import MlflowClient

    name, alias = params.registry.model_name, params.registry.alias
    previous = current_champion_version(name, alias)
    client = MlflowClient()
    version = registered or register_version(trained, params)
    client.set_model_version_tag(name, version, "ct.data_md5", trained.data_md5)
    client.set_model_version_tag(name, version, "ct.previous_champion", previous or "")
    write_journal(name, version, previous, templates)
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, "ct.previous_champion", previous or "")
    client.set_tag(trained.run_id, "ct.model_version", version)
    built = version_identity(name, version)
    return Promotion(
        name,
        alias,
        version,
        previous,
        trained.run_id,
        trained.data_md5,
        built.image,
        built.image_digest,
        built.image_kind,
    )


def record_rollback(promotion: Promotion, reason: str) -> None:
    """Record on the candidate's run and version that it was rolled back, and why."""
    from mlflow.tracking import MlflowClient

    from tasks.services import redact

    reason = redact(reason)
    client = MlflowClient()
    client.set_tag(promotion.run_id, "ct.rolled_back", "true")
    client.set_tag(promotion.run_id, "ct.rollback_reason", reason[:5000])
    client.set_model_version_tag(
        promotion.model_name, promotion.version, "ct.rolled_back", reason[:5000] or "true"
    )
    # the rollback is the decision for this data, params and code: the next trigger on the
    # same data skips it instead of promoting it again (force=True retrains)
    client.set_tag(promotion.run_id, "ct.decision", "rolled-back")
    client.set_tag(promotion.run_id, "ct.champion", promotion.previous_version or "none")
    client.set_tag(promotion.run_id, "ct.completed", "true")


FROZEN_TAG = "ct.frozen_candidate"


def mark_frozen_candidate(trained: TrainedModel, params: Params, version: str, why: str) -> None:
    """Tag a version that passed its gates while promotions were frozen: registered, with its
    lineage, and promotable by hand (`ctflows promote`) once the freeze is lifted."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    name = params.registry.model_name
    client.set_model_version_tag(name, version, "ct.data_md5", trained.data_md5)
    client.set_model_version_tag(name, version, FROZEN_TAG, why[:5000] or "true")
    client.set_tag(trained.run_id, "ct.model_version", version)


@task(name="register-candidate", cache_policy=NONE)
def register_candidate(trained: TrainedModel, params: Params, frozen: str | None = None) -> str:
    """The gates passed: register the version its image is built for; the alias stays.

    ``frozen`` (why promotions are frozen): the version is tagged a frozen candidate."""
    version = register_version(trained, params)
    if frozen is not None:
        mark_frozen_candidate(trained, params, version, frozen)
        get_run_logger().warning(
            "registered %s v%s (run %s) as a frozen candidate: @%s unchanged; promote it by "
            "hand once the freeze is lifted",
            params.registry.model_name,
            version,
            trained.run_id,
            params.registry.alias,
        )
        return version
    get_run_logger().info(
        "registered %s v%s (run %s); @%s unchanged until its image is in the registry",
        params.registry.model_name,
        version,
        trained.run_id,
        params.registry.alias,
    )
    return version


@task(name="promote-model", cache_policy=NONE)
def promote_model(
    trained: TrainedModel,
    params: Params,
    templates: dict[str, PodTemplate],
    registered: str | None = None,
) -> Promotion:
    logger = get_run_logger()
    promotion = register_and_promote(trained, params, templates, registered)
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


@task(name="restore-champion", cache_policy=NONE)
def restore_champion(promotion: Promotion, reason: str, params: Params) -> None:
    """After a failed deploy: alias and cluster back to the journaled state, rollback recorded.

    If the cluster cannot be restored now, the journal stays open for the next run.
    """
    get_run_logger().warning(
        "restoring @%s of %s to v%s after a failed deploy: %s",
        promotion.alias,
        promotion.model_name,
        promotion.previous_version or "(none)",
        reason,
    )
    record_rollback(promotion, reason)
    recover(params)


class SwitchRefused(CtflowsError, ValueError):
    """A rollback or promotion that cannot be done as asked (nothing to go back to, or the
    version already is the champion); nothing was changed."""

    kind = ErrorKind.BAD_INPUT


@dataclass(frozen=True)
class RollbackPlan:
    current: str | None
    target: ModelIdentity


@task(name="plan-rollback", cache_policy=NONE)
def plan_rollback(params: Params, version: str | None) -> RollbackPlan:
    """The version to go back to: ``version``, else the one the champion replaced."""
    from mlflow.tracking import MlflowClient

    name, alias = params.registry.model_name, params.registry.alias
    current = current_champion_version(name, alias)
    if version is None:
        if current is None:
            raise SwitchRefused(f"{name} has no @{alias}: nothing to roll back")
        version = MlflowClient().get_model_version(name, current).tags.get("ct.previous_champion")
        if not version:
            raise SwitchRefused(f"{name} v{current} replaced no earlier champion; pass a version")
    target = version_identity(name, version)  # the registry's spelling: "02" is version 2
    if target.version == current:
        raise SwitchRefused(f"{name} v{target.version} already is @{alias}: nothing to change")
    return RollbackPlan(current, target)


@task(name="begin-rollback", cache_policy=NONE)
def begin_rollback(params: Params, plan: RollbackPlan, templates: dict[str, PodTemplate]) -> None:
    """Journal the rollback before the cluster changes, like a promotion."""
    write_journal(params.registry.model_name, plan.target.version, plan.current, templates)


@task(name="switch-alias", cache_policy=NONE)
def switch_alias(params: Params, plan: RollbackPlan) -> None:
    """After the cluster serves the target: move the alias and close the journal."""
    from mlflow.tracking import MlflowClient

    name, alias = params.registry.model_name, params.registry.alias
    move_alias(name, alias, plan.target.version)
    MlflowClient().set_registered_model_tag(name, "ct.previous_champion", plan.current or "")
    clear_journal(name)


@task(name="finish-promotion", cache_policy=NONE)
def finish_promotion(model_name: str) -> None:
    """The alias and the cluster agree on the new version: close the journal."""
    clear_journal(model_name)

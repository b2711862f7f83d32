"""Stage `promote`: register the candidate and move the `champion` alias, restorably."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import Params
from tasks.data import DataVersion
from tasks.deploy import ModelIdentity, PodTemplate
from tasks.train import PreviousRun, TrackingError, TrainedModel, find_previous_run

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


JOURNAL_TAG = "ct.pending"


class JournalError(TrackingError):
    """The recovery journal cannot be read, is open when it must not be, or cannot be applied
    completely; the journal is kept, so the repair can be done later."""


class RecoveryIncomplete(JournalError):
    """Recovery could not put the cluster back as journaled: nothing was cleared."""

    def __init__(self, model_name: str, entry: dict[str, Any], reason: str) -> None:
        self.model_name, self.entry, self.reason = model_name, entry, reason
        super().__init__(
            f"cannot recover {model_name} from the interrupted change to v{entry.get('version')}: "
            f"{reason}. The journal (tag {JOURNAL_TAG} on the registered model) is kept and "
            "the alias was not moved; run recovery where the cluster in params is reachable "
            "(deploy.target, deploy.kubeconfig, deploy.context)"
        )


def write_journal(
    model_name: str, version: str, previous: str | None, templates: dict[str, PodTemplate]
) -> None:
    """Before the alias or the cluster changes: what to put back if this process dies.

    Kept as a tag on the registered model, so the next run (anywhere) finds it. An open
    journal is never overwritten: it is the only record of what an earlier run left to repair.
    """
    from mlflow.tracking import MlflowClient

    open_entry = read_journal(model_name)
    if open_entry is not None:
        raise JournalError(
            f"{model_name} has an open journal (an unfinished change to "
            f"v{open_entry.get('version')}); it must be recovered before v{version} is "
            "promoted or rolled back, and was left as it is"
        )
    entry = {
        "version": version,
        "previous_version": previous,
        "templates": {
            n: {"image": t.image, "annotations": t.annotations} for n, t in templates.items()
        },
    }
    MlflowClient().set_registered_model_tag(model_name, JOURNAL_TAG, json.dumps(entry))


def read_journal(model_name: str) -> dict[str, Any] | None:
    """The open journal, or None when there is none (no such model, or no tag).

    JournalError when it could not be read (the registry failed) or is unreadable: "no
    journal" and "could not read it" are different answers.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient().get_registered_model(model_name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise JournalError(f"could not read the journal of {model_name}: {exc}") from exc
    raw = tags.get(JOURNAL_TAG)
    if not raw:
        return None
    try:
        entry = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JournalError(f"the journal of {model_name} is not JSON: {raw[:200]!r}") from exc
    if not isinstance(entry, dict) or "version" not in entry:
        raise JournalError(f"the journal of {model_name} is malformed: {raw[:200]!r}")
    return entry


def clear_journal(model_name: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().delete_registered_model_tag(model_name, JOURNAL_TAG)


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


def recover(params: Params) -> str | None:
    """Bring alias and cluster back into agreement after a run died mid-promotion.

    Reads the journal a promotion (or rollback) writes before changing anything; if one is
    open, the cluster gets the recorded pod templates back, then the alias the recorded
    version, and only then is the journal cleared. When the cluster cannot be put back (this
    worker deploys in dry-run mode, the API fails), RecoveryIncomplete: alias and journal stay.
    """
    from tasks.deploy import DeployError, PodTemplate, open_cluster, resolve_mode

    name, alias = params.registry.model_name, params.registry.alias
    entry = read_journal(name)
    if entry is None:
        return None
    templates = entry.get("templates") or {}
    restored = []
    if templates:
        if resolve_mode(params.deploy) != "cluster":
            raise RecoveryIncomplete(
                name,
                entry,
                f"the journal records the cluster's state ({', '.join(templates)}) but this "
                "process deploys in dry-run mode and cannot restore it",
            )
        try:
            cluster = open_cluster(params)
            for deployment, t in templates.items():
                previous = PodTemplate(t["image"], t["annotations"])
                if cluster.current(deployment) != previous:
                    cluster.restore(deployment, previous, params.deploy.rollout_timeout_seconds)
                    restored.append(f"{deployment} -> {previous.image}")
                if cluster.current(deployment) != previous:
                    raise DeployError(f"{deployment} still differs from the journaled template")
        except DeployError as exc:
            raise RecoveryIncomplete(name, entry, f"the cluster was not restored: {exc}") from exc
    move_alias(name, alias, entry["previous_version"])
    clear_journal(name)
    what = ", ".join(restored) or "cluster unchanged"
    return (
        f"an earlier run died while moving {name} to v{entry['version']}: "
        f"@{alias} restored to v{entry['previous_version'] or '(none)'}, {what}"
    )


@task(name="register-candidate", cache_policy=NONE)
def register_candidate(trained: TrainedModel, params: Params) -> str:
    """The gates passed: register the version its image is built for; the alias stays."""
    version = register_version(trained, params)
    get_run_logger().info(
        "registered %s v%s (run %s); @%s unchanged until its image is in the registry",
        params.registry.model_name,
        version,
        trained.run_id,
        params.registry.alias,
    )
    return version


def still_decided(previous: PreviousRun, champion: str | None) -> bool:
    """Whether an earlier completed run on the same data, params and code still decides now.

    A promotion (kept or rolled back) holds until someone forces a retrain; a rejection
    holds only against the champion it was compared with.
    """
    if previous.decision == "reject":
        return previous.champion == (champion or "none")
    return True


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


@task(name="find-previous-run", cache_policy=NONE)  # the name bench/run.py times
def find_decision(
    experiment_id: str, lineage: dict[str, str], params: Params
) -> PreviousRun | None:
    """The earlier decision on this data, params and code that still holds, if any."""
    previous = find_previous_run(
        experiment_id, lineage["ct.data_md5"], lineage["ct.params_hash"], lineage["ct.git_commit"]
    )
    if previous is None:
        return None
    champion = current_champion_version(params.registry.model_name, params.registry.alias)
    if still_decided(previous, champion):
        return previous
    get_run_logger().info(
        "run %s rejected this data against champion v%s; the champion is now v%s: deciding again",
        previous.run_id,
        previous.champion,
        champion or "(none)",
    )
    return None


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
            raise TrackingError(f"{name} has no @{alias}: nothing to roll back")
        version = MlflowClient().get_model_version(name, current).tags.get("ct.previous_champion")
        if not version:
            raise TrackingError(f"{name} v{current} replaced no earlier champion; pass a version")
    if version == current:
        raise TrackingError(f"{name} v{version} already is @{alias}")
    return RollbackPlan(current, version_identity(name, version))


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


@task(name="recover-interrupted", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def recover_interrupted(params: Params) -> str | None:
    note = recover(params)
    if note:
        get_run_logger().warning(note)
    return note

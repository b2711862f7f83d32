"""The crash journal of a promotion or rollback, and the recovery that applies it.

Before the alias or the cluster changes, what runs now is written as a tag on the registered
model (``ct.pending``: the new version, the previous one, the pod templates), so the next run,
anywhere, can put both back if this process dies half-way. Recovery restores the cluster, then
the alias, and only then clears the journal.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.champion import move_alias
from tasks.cluster import PodTemplate
from tasks.config import Params
from tasks.train import TrackingError, training_slot_taken

log = logging.getLogger(__name__)

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
        **_writer(),
    }
    MlflowClient().set_registered_model_tag(model_name, JOURNAL_TAG, json.dumps(entry))


def _writer() -> dict[str, Any]:
    """Who writes the journal: the flow run (when in one), the host and the process."""
    import os
    import socket

    from prefect.runtime import flow_run

    return {"flow_run": flow_run.id, "host": socket.gethostname(), "pid": os.getpid()}


ENDED = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def writer_alive(entry: dict[str, Any]) -> bool | None:
    """Whether the process that wrote ``entry`` still runs: known on the host that wrote it
    (its pid), None elsewhere."""
    import os
    import socket

    pid = entry.get("pid")
    if entry.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def writer_state(entry: dict[str, Any]) -> str | None:
    """The state of the flow run that wrote ``entry`` (``RUNNING``, ``CRASHED``, ...), None
    when it is not known (written outside a flow run, or the run is not on this server)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    run_id = entry.get("flow_run")
    if not run_id:
        return None
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(run_id).state
        except ObjectNotFound:
            return None
    return state.type.value if state is not None else None


def writer_ended(entry: dict[str, Any]) -> str | None:
    """The final state of the flow run that wrote ``entry`` (``CRASHED``, ...), or None while
    it may still be working (running, unknown, or written outside a flow run).

    Prefect's runner marks a served run whose process died (kill -9, out of memory) Crashed
    when it sees the process exit: its journal can be applied at once, without waiting for
    its training slot's lease to run out."""
    kind = writer_state(entry)
    return kind if kind in ENDED else None


def read_journal(model_name: str, client: Any = None) -> dict[str, Any] | None:
    """The open journal, or None when there is none (no such model, or no tag); read with
    ``client`` (an MlflowClient; default: the process's tracking store).

    JournalError when it could not be read (the registry failed) or is unreadable: "no
    journal" and "could not read it" are different answers.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        tags = (client or MlflowClient()).get_registered_model(model_name).tags
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


def stale_journal(params: Params, client: Any = None) -> str | None:
    """Why the model's open journal needs repairing now, or None: no journal, or a live run
    holds the training slot (it is still working, or repairs at its own start).

    Stale when the run that wrote it has ended (a served run killed mid-deploy is marked
    Crashed by its runner) or when no run holds the slot (a writer outside a flow run, or a
    killed run whose lease ran out). One registry read when there is no journal."""
    entry = read_journal(params.registry.model_name, client)
    if entry is None:
        return None
    ended = writer_ended(entry)
    if ended is not None:
        return f"the run that wrote it ended {ended}"
    if not training_slot_taken(params):
        return "no run holds the training slot"
    return None


def clear_journal(model_name: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().delete_registered_model_tag(model_name, JOURNAL_TAG)


def recover(params: Params) -> str | None:
    """Bring alias and cluster back into agreement after a run died mid-promotion.

    Reads the journal a promotion (or rollback) writes before changing anything; if one is
    open, the cluster gets the recorded pod templates back, then the alias the recorded
    version, and only then is the journal cleared. When the cluster cannot be put back (this
    worker deploys in dry-run mode, the API fails), RecoveryIncomplete: alias and journal stay.
    """
    from tasks.cluster import DeployError, PodTemplate, open_cluster
    from tasks.deploy import resolve_mode

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


@task(name="recover-interrupted", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def recover_interrupted(params: Params) -> str | None:
    note = recover(params)
    if note:
        get_run_logger().warning(note)
    return note


@task(name="journal-writer-ended", cache_policy=NONE)
def journal_writer_ended(params: Params) -> str | None:
    """The final state of the run that wrote the model's open journal, if it has ended."""
    entry = read_journal(params.registry.model_name)
    return None if entry is None else writer_ended(entry)

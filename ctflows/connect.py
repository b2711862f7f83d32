"""Which Prefect server `ctflows` talks to: the project's own, the one its served runs use.

PREFECT_API_URL when it is set; else the server `make serve` records in
``<state_dir>/prefect/server.json`` while it runs, if it answers. Commands that take the
model's training slot in this process (`run --local`, rollback, promote) start the project's
own server (its database in ``<state_dir>/prefect``, as `make serve` does) for their duration
when none is known, and record it the same way, so that every other ctflows command of the
project meanwhile finds it and holds the same slot; never Prefect's temporary server, whose
slot is another and which could apply the journal of a promotion that is still running.
`ctflows run` without `--local` needs the served deployments, so it refuses when no server
is known.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctflows.catalog import discover
from deployments.server import (
    prefect_server,
    recorded_server,
    refresh_global_settings,
    server_file,
    serving_on,
)
from tasks.config import load_params
from tasks.errors import CtflowsError, ErrorKind


class NoProjectServer(CtflowsError, RuntimeError):
    """No Prefect server of the project is known: PREFECT_API_URL is unset and `make serve` is
    not running (or its server does not answer)."""

    kind = ErrorKind.UNAVAILABLE

    def __init__(self, what: str, record: Path) -> None:
        self.record = record
        super().__init__(
            f"{what} needs the project's Prefect server (the training slot its served runs "
            f"hold), and none is known: PREFECT_API_URL is not set and no running `make serve` "
            f"is recorded in {record}. Start `make serve` in the project (ctflows then finds "
            "it by itself), or export PREFECT_API_URL=http://HOST:PORT/api of the server that "
            "runs this project's flows"
        )


@dataclass(frozen=True)
class PrefectAddress:
    api_url: str | None
    source: str  # "PREFECT_API_URL", the record's path, or "none"


def project_state_dir(project: Path) -> Path:
    """The state dir of the project's root params (where `make serve` keeps its server)."""
    root = project / "params.yaml"
    if root.exists():
        return load_params(root).state_dir
    return discover(project)[0].params().state_dir


def use_project_server(project: Path) -> PrefectAddress:
    """Point this process at the project's Prefect server, if one is known."""
    if os.environ.get("PREFECT_API_URL"):
        return PrefectAddress(os.environ["PREFECT_API_URL"], "PREFECT_API_URL")
    state_dir = project_state_dir(project)
    url = recorded_server(state_dir)
    if url is None:
        return PrefectAddress(None, "none")
    os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:  # settings already read: read them again
        refresh_global_settings()
    return PrefectAddress(url, str(server_file(state_dir)))


def require_project_server(project: Path, what: str) -> PrefectAddress:
    address = use_project_server(project)
    if address.api_url is None:
        raise NoProjectServer(what, server_file(project_state_dir(project)))
    return address


@contextlib.contextmanager
def project_server(project: Path, what: str) -> Iterator[PrefectAddress]:
    """The project's Prefect server for a command that takes the training slot here: the
    known one, else the project's own started (and recorded) until the command ends."""
    address = use_project_server(project)
    if address.api_url is not None:
        yield address
        return
    state_dir = project_state_dir(project)
    record = server_file(state_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        with (record.parent / "server.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two commands at once start one server
            address = use_project_server(project)
            if address.api_url is None:
                print(
                    f"{what}: no Prefect server of this project is running (`make serve`); "
                    f"starting its own for this command, database in {record.parent}",
                    file=sys.stderr,
                    flush=True,
                )
                url = stack.enter_context(prefect_server(record.parent))
                stack.enter_context(serving_on(state_dir, url, announce=False))
                address = PrefectAddress(url, str(record))
        yield address

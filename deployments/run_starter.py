"""Starting flow runs for the webhook receiver: one live run per data version, through one
kept-alive Prefect client that re-sends what a busy server answered 503.

Used by deployments/receiver.py (the HTTP side); the rules of a request (signature, body,
idempotency key) live in deployments/webhook.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from deployments.webhook import Landed, WebhookError, moves_on

log = logging.getLogger("ctflows.webhook")


@dataclass(frozen=True)
class Started:
    """The flow run a request maps to, and whether it existed before this request."""

    flow_run_id: str
    flow_run_name: str
    deployment: str
    parameters: dict[str, Any]
    idempotency_key: str
    duplicate: bool

    def answer(self) -> dict[str, Any]:
        return {
            "flow_run_id": self.flow_run_id,
            "flow_run_name": self.flow_run_name,
            "deployment": self.deployment,
            "parameters": self.parameters,
            "idempotency_key": self.idempotency_key,
            "duplicate": self.duplicate,
        }


# Prefect calls at once: a SQLite-backed server slows down under concurrent writes.
PREFECT_CALLS = 4
# A Prefect server on SQLite answers 503 when a write meets a locked database; Prefect's client
# waits 2 s, 4 s, ... before retrying, which alone puts seconds on the answer. The receiver's
# client retries those first, after these short pauses (seconds), then leaves it to Prefect's.
BUSY_RETRY_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4)


class BusyRetryTransport(httpx.AsyncBaseTransport):
    """An HTTP transport that re-sends a request the Prefect server answered 503 (busy) after a
    short pause. Every call the receiver makes is safe to repeat: reads, and flow-run creations
    that carry an idempotency key."""

    def __init__(self, inner: httpx.AsyncBaseTransport, pauses: tuple[float, ...]) -> None:
        self.inner = inner
        self.pauses = pauses

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for pause in self.pauses:
            response = await self.inner.handle_async_request(request)
            if response.status_code != 503:
                return response
            await response.aclose()
            log.debug(
                "Prefect answered 503 to %s %s; again in %.2f s", request.method, request.url, pause
            )
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def prefect_transport() -> httpx.AsyncBaseTransport:
    """The receiver's connection pool to the Prefect API: kept-alive, retrying busy answers."""
    limits = httpx.Limits(
        max_connections=2 * PREFECT_CALLS, max_keepalive_connections=PREFECT_CALLS
    )
    return BusyRetryTransport(httpx.AsyncHTTPTransport(limits=limits), BUSY_RETRY_PAUSES)


# A run seen pending or running this recently answers duplicates without asking Prefect again.
FRESH_SECONDS = 2.0


class RunStarter:
    """Creates at most one live flow run per data version, through one shared Prefect client."""

    def __init__(self, client: Any, deployment: str, params_file: str) -> None:
        """``deployment``: the full name of one model's data-landed deployment."""
        self.client = client
        self.deployment = deployment
        self.params_file = params_file
        self.deployment_id: Any = None
        self.locks: dict[str, asyncio.Lock] = {}
        self.waiting: dict[str, int] = {}
        self.calls = asyncio.Semaphore(PREFECT_CALLS)
        self.live: dict[str, tuple[Started, float]] = {}
        self.attempts: dict[str, int] = {}  # the last attempt seen per data version

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, identity: str) -> AsyncIterator[None]:
        """Requests for one data version take turns; other versions go on in parallel."""
        lock = self.locks.setdefault(identity, asyncio.Lock())
        self.waiting[identity] = self.waiting.get(identity, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self.waiting[identity] -= 1
            if not self.waiting[identity]:
                del self.waiting[identity], self.locks[identity]

    async def _deployment_id(self, refresh: bool = False) -> Any:
        if self.deployment_id is None or refresh:
            deployment = await self.client.read_deployment_by_name(self.deployment)
            self.deployment_id = deployment.id
        return self.deployment_id

    async def start(self, landed: Landed) -> Started:
        """The live run of ``landed``'s data version, created if there is none.

        Call it under ``one_at_a_time(landed.identity)``.
        """
        now = time.monotonic()
        for identity in [i for i, (_, seen) in self.live.items() if now - seen > FRESH_SECONDS]:
            del self.live[identity]
        if landed.identity in self.live:
            started = self.live[landed.identity][0]
            return dataclasses.replace(started, duplicate=True)
        async with self.calls:
            started, final = await self._start(landed)
        if not final:
            self.live[landed.identity] = (started, time.monotonic())
        return started

    async def _start(self, landed: Landed) -> tuple[Started, bool]:
        """Create the run of the data version's current attempt; Prefect hands back the
        existing run for a key it has seen. A run that failed moves on to the next attempt."""
        from prefect.exceptions import ObjectNotFound

        parameters = {
            "rev": landed.rev,
            "path": landed.path,
            "md5": landed.md5,
            "params_file": self.params_file,
        }
        attempt = self.attempts.get(landed.identity, 0)
        refreshed = False
        while True:
            # Prefect keeps idempotency keys per flow, not per deployment: the deployment (the
            # model) is part of the key, so two models landing the same data never share a run
            key = f"{self.deployment}:{landed.idempotency_key(attempt)}"
            asked = datetime.datetime.now(datetime.UTC)
            try:
                run = await self.client.create_flow_run_from_deployment(
                    await self._deployment_id(refresh=refreshed),
                    parameters=parameters,
                    idempotency_key=key,
                    tags=[landed.tag],
                )
            except ObjectNotFound:  # the deployment was re-created under a new id
                if refreshed:
                    raise
                refreshed = True
                continue
            state = run.state.type.value if run.state else ""
            if not moves_on(state):
                break
            attempt += 1
        self.attempts[landed.identity] = attempt
        while len(self.attempts) > 10_000:
            self.attempts.pop(next(iter(self.attempts)))
        started = Started(
            str(run.id),
            run.name,
            self.deployment,
            dict(run.parameters or parameters),
            key,
            duplicate=bool(run.created and run.created < asked - datetime.timedelta(seconds=1)),
        )
        return started, bool(run.state and run.state.is_final())


async def resolve_landed(landed: Landed, repo: str) -> Landed:
    """A request without md5 names a revision, which may move (``main``): pin it to its commit
    and md5 now, so the key names the data and the run trains on what the request meant."""
    if landed.md5:
        return landed
    from tasks.data import DataError, resolve_version

    try:
        version = await asyncio.to_thread(resolve_version, repo, landed.path, landed.rev)
    except DataError as exc:
        raise WebhookError(422, f"cannot resolve {landed.path}@{landed.rev}: {exc}") from exc
    return Landed(landed.path, version.rev, version.md5, landed.model)

"""The webhook receiver: a FastAPI app on uvicorn that turns a signed request into a flow run.

    python -m deployments.webhook --host 127.0.0.1 --port 8787 [--params params.yaml]

`POST /hooks/data-landed` answers 202 with the flow run of `continuous-training/<model>-on-new-data`
it started (or the one already started for that data version). It holds up to slow and many
clients: at most ``triggers.webhook.max_in_flight`` connections are served at once (more get
503 at once), each request has ``request_timeout_seconds`` in all (headers, body and starting
the run, not per read), and at most ``max_body_bytes`` of a body are read before the signature
is checked. The rules (signature, body, idempotency) live in deployments/webhook.py, the
starting of runs in deployments/run_starter.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from deployments.definitions import data_landed_deployment
from deployments.run_starter import RunStarter, prefect_transport, resolve_landed
from deployments.webhook import (
    PATH,
    NoSecret,
    ReplayJournal,
    Route,
    WebhookError,
    parse_body,
    route,
    verify,
    webhook_secret,
)
from tasks.config import Params, load_params
from tasks.services import install_redaction, redact

log = logging.getLogger("ctflows.webhook")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, never more than ``limit`` bytes of it; a refused body is drained (up to 8x the
    limit) so the client reads the 413 instead of a reset connection."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        if int(length) <= 8 * limit:
            async for _ in request.stream():
                pass
        raise WebhookError(413, f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookError(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def model_routes(params_file: str) -> list[Route]:
    """A route per model of the project whose root params file is ``params_file``."""
    from ctflows.catalog import discover, working

    routes = []
    for model in working(discover(Path(params_file).resolve().parent)):
        params = model.params()
        deployment = data_landed_deployment(params, model.name)
        routes.append(
            Route(
                model.name, params.data.path, deployment, str(model.params_file), params.data.repo
            )
        )
    return routes


def create_app(params: Params, routes: list[Route], secret: str) -> FastAPI:
    """The receiver's ASGI app: `GET /health` and `POST /hooks/data-landed`. ``params`` (the
    project's root params) sets the webhook's limits; ``routes`` says where each model's
    requests go."""
    hook = params.triggers.webhook
    journal = ReplayJournal(hook.tolerance_seconds, params.state_dir / "webhook" / "accepted.log")
    budget = max(0.5, hook.request_timeout_seconds - 0.5)  # answer before the hard cut-off

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from prefect.client.orchestration import get_client

        async with get_client(httpx_settings={"transport": prefect_transport()}) as client:
            app.state.starters = {
                r.model: RunStarter(client, r.deployment, r.params_file) for r in routes
            }
            yield

    app = FastAPI(title="ctflows webhook", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"no such path {request.url.path}; POST {PATH}"
        if exc.status_code != 404:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(PATH, status_code=202)
    async def data_landed(request: Request) -> JSONResponse:
        client = request.client.host if request.client else "-"
        stage, deployment = "receive", "the data-landed deployment"
        try:
            async with asyncio.timeout(budget):
                body = await read_body(request, hook.max_body_bytes)
                now = time.time()
                headers = {k.lower(): v for k, v in request.headers.items()}
                signed = verify(secret, headers, body, now, hook.tolerance_seconds)
                landed = parse_body(body)
                target = route(landed, routes)
                landed = dataclasses.replace(landed, model=target.model)
                deployment = target.deployment
                starter: RunStarter = request.app.state.starters[target.model]
                stage = "start"
                async with starter.one_at_a_time(landed.identity):
                    earlier = journal.accepted(signed.signature, time.time())
                    if earlier:
                        raise WebhookError(
                            409, f"this request was already accepted as flow run {earlier}"
                        )
                    landed = await resolve_landed(landed, target.repo)
                    started = await starter.start(landed)
                    journal.record(signed, started.flow_run_id, time.time())
        except WebhookError as exc:
            log.warning("refused %s: %s %s", client, exc.status, exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=_CLOSE)
        except ClientDisconnect:
            log.warning("client %s went away before its request was read", client)
            return JSONResponse({"error": "client went away"}, status_code=400, headers=_CLOSE)
        except TimeoutError:
            if stage == "receive":
                log.warning("refused %s: request not received within %.1f s", client, budget)
                message = f"request not received within {budget:.1f} s"
                return JSONResponse({"error": message}, status_code=408, headers=_CLOSE)
            log.error("could not start %s within %.1f s", deployment, budget)
            message = f"could not start {deployment} within {budget:.1f} s; retry the request"
            return JSONResponse({"error": message}, status_code=503, headers=_CLOSE)
        except Exception as exc:  # the Prefect API is down or the deployment is missing
            why = redact(f"{type(exc).__name__}: {exc}")
            log.error("could not start %s: %s", deployment, why)
            message = f"could not start {deployment}: {why}; retry"
            return JSONResponse({"error": message}, status_code=503, headers=_CLOSE)
        log.info(
            "accepted %s: %s -> flow run %s%s",
            client,
            landed.identity,
            started.flow_run_id,
            " (duplicate)" if started.duplicate else "",
        )
        return JSONResponse(started.answer(), status_code=202)

    return app


_CLOSE = {"Connection": "close"}


def deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a whole-request deadline: a connection that has not
    finished its request (headers, body, answer) ``seconds`` after it opened, or after its
    previous answer, is closed. uvicorn alone bounds neither slow headers nor slow bodies."""

    class DeadlineProtocol(H11Protocol):
        deadline_handle: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self.deadline_handle is not None:
                self.deadline_handle.cancel()
            self.deadline_handle = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            if not self.transport.is_closing():
                log.warning("closed %s: no complete request within %.1f s", self.client, seconds)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline_handle is not None:
                self.deadline_handle.cancel()
            super().connection_lost(exc)

    return DeadlineProtocol


class Receiver:
    """The receiver bound to its socket (port 0 picks a free one), served in this thread or
    in a background thread that stops with ``stop()``."""

    def __init__(
        self, params: Params, routes: list[Route], secret: str, host: str, port: int
    ) -> None:
        import uvicorn

        hook = params.triggers.webhook
        self.config = uvicorn.Config(
            create_app(params, routes, secret),
            host=host,
            port=port,
            http=deadline_protocol(hook.request_timeout_seconds),
            limit_concurrency=hook.max_in_flight,
            backlog=4 * hook.max_in_flight,
            timeout_keep_alive=2,
            timeout_graceful_shutdown=int(hook.request_timeout_seconds) + 1,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise SystemExit(
                f"webhook receiver cannot listen on {host}:{port}: {exc.strerror}; "
                "pick another port (--webhook-port / --port)"
            ) from exc
        self.server = uvicorn.Server(self.config)
        self.host = host
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    def run(self) -> None:
        self.server.run(sockets=[self.socket])

    @contextlib.contextmanager
    def in_thread(self, startup_timeout: float = 30) -> Iterator[Receiver]:
        self.thread = threading.Thread(target=self.run, name="webhook", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the webhook receiver did not start; see the log above")
            time.sleep(0.05)
        try:
            yield self
        finally:
            self.server.should_exit = True
            self.thread.join(timeout=self.config.timeout_graceful_shutdown or 10)
            self.socket.close()


def make_receiver(params_file: str, host: str, port: int) -> Receiver:
    """The receiver for ``params_file``; NoSecret if no webhook secret is configured."""
    params = load_params(params_file)
    return Receiver(params, model_routes(params_file), webhook_secret(params), host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.webhook",
        description="Receive signed data-landed webhooks and start training runs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8787, help="port (default: %(default)s)")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect call
    install_redaction()  # no credentials (a token in data.repo) in any log line
    try:
        receiver = make_receiver(os.path.abspath(args.params), args.host, args.port)
    except NoSecret as exc:
        raise SystemExit(str(exc)) from exc
    print(f"webhook receiver on {receiver.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver.run()

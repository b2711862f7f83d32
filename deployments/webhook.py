"""Signed webhook receiver: a verified `POST /hooks/data-landed` starts one training run.

    python -m deployments.webhook --host 127.0.0.1 --port 8787 [--params params.yaml]

Prefect's open-source server has no webhooks (that is Prefect Cloud), so this receiver verifies
the request and creates a flow run of `continuous-training/on-new-data` with an idempotency key
derived from the data (md5, else path and revision): the same data never starts two runs.

Signed like Slack's and Stripe's webhooks:
    X-Ctflows-Timestamp: <unix seconds>
    X-Ctflows-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
The secret comes from $CTFLOWS_WEBHOOK_SECRET or a Prefect Secret block and is never logged.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tasks.config import Params, load_params

log = logging.getLogger("ctflows.webhook")
PATH = "/hooks/data-landed"
DEPLOYMENT = "continuous-training/on-new-data"


class WebhookError(Exception):
    """A refused request: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class ReplayGuard:
    """Remembers accepted signatures for the tolerance window, so a replay is refused.

    With a ``journal`` file the memory survives a restart of the receiver: accepted
    signatures are appended to it and the ones still inside the window are read back.
    """

    def __init__(self, window: float, journal: Path | None = None) -> None:
        self.window = window
        self.seen: OrderedDict[str, float] = OrderedDict()
        self.lock = threading.Lock()
        self.journal = journal
        if journal is not None and journal.exists():
            horizon = time.time() - 2 * window
            for line in journal.read_text().splitlines():
                signature, _, at = line.partition(" ")
                with contextlib.suppress(ValueError):
                    if float(at) >= horizon:
                        self.seen[signature] = float(at)

    def check_and_add(self, signature: str, now: float) -> bool:
        with self.lock:
            while self.seen and next(iter(self.seen.values())) < now - 2 * self.window:
                self.seen.popitem(last=False)
            if signature in self.seen:
                return False
            self.seen[signature] = now
            if self.journal is not None:
                self.journal.parent.mkdir(parents=True, exist_ok=True)
                with self.journal.open("a") as fh:
                    fh.write(f"{signature} {now}\n")
            return True


def verify(
    secret: str,
    headers: dict[str, str],
    body: bytes,
    now: float,
    tolerance: float,
    guard: ReplayGuard,
) -> None:
    """Raise WebhookError unless the request is signed with ``secret``, fresh and new."""
    timestamp = headers.get("x-ctflows-timestamp", "")
    signature = headers.get("x-ctflows-signature", "")
    if not timestamp or not signature:
        raise WebhookError(401, "missing X-Ctflows-Timestamp or X-Ctflows-Signature header")
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise WebhookError(401, "X-Ctflows-Timestamp must be unix seconds") from exc
    if abs(now - sent) > tolerance:
        raise WebhookError(401, f"timestamp is more than {tolerance:.0f} s off the server clock")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        raise WebhookError(401, "signature does not match")
    if not guard.check_and_add(signature, now):
        raise WebhookError(409, "this request was already accepted (replay)")


@dataclass(frozen=True)
class Landed:
    path: str
    rev: str
    md5: str | None

    @property
    def idempotency_key(self) -> str:
        return f"data-landed:{self.md5}" if self.md5 else f"data-landed:{self.path}@{self.rev}"


def parse_body(body: bytes) -> Landed:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WebhookError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WebhookError(400, "body must be a JSON object")
    missing = [k for k in ("path", "rev") if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise WebhookError(422, f"missing or empty string fields: {missing}")
    md5 = data.get("md5")
    if md5 is not None and (not isinstance(md5, str) or len(md5) != 32):
        raise WebhookError(422, "md5, when given, must be a 32-character hex string")
    return Landed(data["path"], data["rev"], md5)


def start_run(landed: Landed, params_file: str) -> dict[str, Any]:
    """Create (or find, by idempotency key) the flow run of the on-new-data deployment."""
    from prefect.client.orchestration import get_client

    parameters = {
        "rev": landed.rev,
        "path": landed.path,
        "md5": landed.md5,
        "params_file": params_file,
    }
    started = time.time()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, idempotency_key=landed.idempotency_key
        )
    duplicate = run.created is not None and run.created.timestamp() < started - 0.5
    return {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "deployment": DEPLOYMENT,
        "parameters": parameters,
        "idempotency_key": landed.idempotency_key,
        "duplicate": duplicate,
    }


def webhook_secret(params: Params) -> str:
    hook = params.triggers.webhook
    secret = os.environ.get(hook.secret_env)
    if not secret and hook.secret_block:
        from prefect.blocks.system import Secret

        try:
            block: Any = Secret.load(hook.secret_block)
            secret = str(block.get())
        except ValueError:
            secret = None
    if not secret:
        raise SystemExit(
            f"no webhook secret: set ${hook.secret_env} or create the Prefect Secret block "
            f"{hook.secret_block!r}"
        )
    return secret


def make_handler(params: Params, params_file: str, secret: str) -> type[BaseHTTPRequestHandler]:
    hook = params.triggers.webhook
    guard = ReplayGuard(hook.tolerance_seconds, params.state_dir / "webhook" / "accepted.log")

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a slow client cannot hold a thread forever
        server_version = "ctflows-webhook"

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _discard(self, length: int) -> None:
            """Read and drop a refused body (up to 8x the limit) so the client gets the answer
            instead of a broken pipe; anything larger is cut off by closing the connection."""
            if length > 8 * hook.max_body_bytes:
                self.close_connection = True
                return
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    return
                length -= len(chunk)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._reply(200, {"status": "ok"})
            return self._reply(404, {"error": f"no such path {self.path}"})

        def do_POST(self) -> None:
            try:
                if self.path != PATH:
                    raise WebhookError(404, f"no such path {self.path}; POST {PATH}")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise WebhookError(411, "Content-Length is required")
                if int(length) > hook.max_body_bytes:
                    self._discard(int(length))
                    raise WebhookError(413, f"body over {hook.max_body_bytes} bytes")
                body = self.rfile.read(int(length))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verify(secret, headers, body, time.time(), hook.tolerance_seconds, guard)
                landed = parse_body(body)
            except WebhookError as exc:
                log.warning("refused %s: %s %s", self.address_string(), exc.status, exc)
                return self._reply(exc.status, {"error": str(exc)})
            except (TimeoutError, ConnectionError) as exc:
                log.warning("client %s went away: %s", self.address_string(), exc)
                return None
            try:
                started = start_run(landed, params_file)
            except Exception as exc:  # the Prefect API is down or the deployment is missing
                log.error("could not start %s: %s", DEPLOYMENT, exc)
                return self._reply(503, {"error": f"could not start {DEPLOYMENT}: {exc}"})
            log.info("accepted %s -> flow run %s", landed, started["flow_run_id"])
            return self._reply(202, started)

    return Handler


def make_server(params_file: str, host: str, port: int) -> ThreadingHTTPServer:
    params = load_params(params_file)
    server = ThreadingHTTPServer(
        (host, port), make_handler(params, params_file, webhook_secret(params))
    )
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Receive signed data-landed webhooks.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8787, help="port (default: %(default)s)")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = make_server(os.path.abspath(args.params), args.host, args.port)
    print(f"webhook receiver on http://{args.host}:{server.server_address[1]}{PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

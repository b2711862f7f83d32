"""Signed data-landed webhooks: what a request must carry, and which run it maps to.

    python -m deployments.webhook --host 127.0.0.1 --port 8787 [--params params.yaml]

Prefect's open-source server has no webhooks (that is Prefect Cloud), so the receiver
(deployments/receiver.py) verifies the request and creates the flow run of
`continuous-training/<model>-on-new-data` itself. This module holds the rules, free of any server:

- signed like Slack's and Stripe's webhooks:
    X-Ctflows-Timestamp: <unix seconds>
    X-Ctflows-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
  the secret comes from $CTFLOWS_WEBHOOK_SECRET or a Prefect Secret block and is never logged;
- a request is accepted only once its flow run exists; accepted signatures are journaled until
  their timestamp is too old to pass anyway, so a replay is refused and the journal stays small;
- one data version (its path and md5) maps to one live flow run: the idempotency key carries an
  attempt number that moves on past runs that failed, crashed or were cancelled, so duplicates
  and concurrent requests share a run while a data version whose last run did not finish can
  be run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.errors import CtflowsError, ErrorKind
from tasks.services import redact

log = logging.getLogger("ctflows.webhook")
PATH = "/hooks/data-landed"

_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}", re.ASCII)
# Prefect state types after which the data version has not been decided and may run again.
RERUNNABLE = frozenset({"FAILED", "CRASHED", "CANCELLED"})


class WebhookError(CtflowsError):
    """A refused request: ``status`` is the HTTP status, the message says why."""

    kind = ErrorKind.BAD_INPUT

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(redact(message))  # it is answered and logged: no credentials


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class Signed:
    """A request whose signature checked out: the signature and the time it was signed."""

    signature: str
    sent: int


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
) -> Signed:
    """Raise WebhookError (401) unless ``body`` is signed with ``secret`` and fresh.

    Header values are checked for shape before anything is compared, so a non-ASCII or
    malformed header is a refusal, never an exception.
    """
    timestamp = headers.get("x-ctflows-timestamp", "")
    signature = headers.get("x-ctflows-signature", "")
    if not timestamp or not signature:
        raise WebhookError(401, "missing X-Ctflows-Timestamp or X-Ctflows-Signature header")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookError(401, "X-Ctflows-Timestamp must be unix seconds (ASCII digits)")
    if not _SIGNATURE.fullmatch(signature):
        raise WebhookError(
            401, "X-Ctflows-Signature must be sha256=<64 lowercase hex digits> (malformed)"
        )
    sent = int(timestamp)
    if abs(now - sent) > tolerance:
        raise WebhookError(401, f"timestamp is more than {tolerance:.0f} s off the server clock")
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode()):
        raise WebhookError(401, "signature does not match")
    return Signed(signature, sent)


class ReplayJournal:
    """The signatures of accepted requests, each with the flow run it started.

    A signature is remembered only while its timestamp could still pass the freshness check
    (``tolerance`` seconds); older ones are pruned, from memory and from the ``path`` file,
    which is rewritten when it holds more expired lines than live ones. With a file, the
    memory survives a restart of the receiver.
    """

    def __init__(self, tolerance: float, path: Path | None = None, now: float | None = None):
        self.tolerance = tolerance
        self.path = path
        self.live: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self.lines = 0  # lines in the file, live or expired
        self.lock = threading.Lock()
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                signature, sent, run = [*line.split(" "), "", ""][:3]
                with contextlib.suppress(ValueError):
                    self.live[signature] = (int(float(sent)), run)
            self.live = OrderedDict(sorted(self.live.items(), key=lambda kv: kv[1][0]))
            with self.lock:
                self._prune(now if now is not None else _time())
                self._rewrite()

    def accepted(self, signature: str, now: float) -> str | None:
        """The flow run ``signature`` was accepted for, if it is remembered."""
        with self.lock:
            self._prune(now)
            entry = self.live.get(signature)
            return entry[1] if entry else None

    def record(self, signed: Signed, flow_run_id: str, now: float) -> None:
        with self.lock:
            self._prune(now)
            self.live[signed.signature] = (signed.sent, flow_run_id)
            if self.path is None:
                return
            if self.lines > 2 * len(self.live) + 100:
                self._rewrite()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as fh:
                    fh.write(f"{signed.signature} {signed.sent} {flow_run_id}\n")
                self.lines += 1

    def __len__(self) -> int:
        return len(self.live)

    def _prune(self, now: float) -> None:
        expired = [s for s, (sent, _) in self.live.items() if sent + self.tolerance < now]
        for signature in expired:
            del self.live[signature]

    def _rewrite(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{s} {sent} {run}\n" for s, (sent, run) in self.live.items()))
        os.replace(tmp, self.path)
        self.lines = len(self.live)


def _time() -> float:
    import time

    return time.time()


@dataclass(frozen=True)
class Landed:
    """The data version a request names: its path and content (md5), or revision until the
    md5 is known.

    What identifies a data version is the file and its bytes, ``(path, md5)``: requests naming
    the same path and md5 share one run whatever revisions they name (the revision is where the
    bytes were found, not what they are); the same bytes landing at another path are another
    event and get a run of their own, never the other path's (its training may still be skipped
    as decided: decisions hold per md5, params and code).
    """

    path: str
    rev: str
    md5: str | None
    model: str | None = None  # the model named in the request, or the one it was routed to

    @property
    def identity(self) -> str:
        return f"{self.path}@{self.md5 or self.rev}"

    @property
    def tag(self) -> str:
        """The tag every flow run started for this content carries (whatever its path)."""
        return f"ctflows.data:{self.md5 or self.identity}"

    def idempotency_key(self, attempt: int) -> str:
        """Unique per model, data version and attempt (Prefect keys are per flow, and every
        model's data-landed deployment runs the same flow)."""
        return f"data-landed:{self.model or ''}:{self.identity}#{attempt}"


@dataclass(frozen=True)
class Route:
    """Where requests for one model go: its data path, deployment and params file."""

    model: str
    data_path: str
    deployment: str
    params_file: str
    repo: str


def route(landed: Landed, routes: Sequence[Route]) -> Route:
    """The model a request is for: the one it names in ``model``, else the one whose
    ``data.path`` is its ``path`` (an installation with one model takes every path)."""
    known = ", ".join(f"{r.model} ({r.data_path})" for r in routes)
    if landed.model is not None:
        for candidate in routes:
            if candidate.model == landed.model:
                return candidate
        raise WebhookError(422, f"unknown model {landed.model!r}; known models: {known}")
    if len(routes) == 1:
        return routes[0]
    matching = [r for r in routes if r.data_path == landed.path]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise WebhookError(
            422, f"no model trains on {landed.path!r}; models and their data: {known}"
        )
    names = ", ".join(r.model for r in matching)
    raise WebhookError(422, f"models {names} all train on {landed.path!r}: name one in `model`")


def moves_on(state_type: str) -> bool:
    """Whether a run that is in ``state_type`` leaves its data version to be run again.

    The idempotency key of a data version carries an attempt number: requests that arrive
    while its run is scheduled, running or completed get that run (the same key); once the run
    has Failed, Crashed or been Cancelled the next request takes the next attempt's key and
    starts a new run. Concurrent requests compute the same key, so they still share one run.
    """
    return state_type.upper() in RERUNNABLE


# The longest value each field may hold: a DVC path, a git revision, a model name.
FIELD_LIMITS = {"path": 1024, "rev": 256, "model": 63}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _usable(name: str, value: str) -> str:
    """``value`` if the receiver can pass it on (to git, DVC and Prefect); else WebhookError
    (422: the sender's error, which a retry does not mend)."""
    limit = FIELD_LIMITS[name]
    if len(value) > limit:
        raise WebhookError(422, f"{name} is {len(value)} characters long; at most {limit}")
    if _CONTROL.search(value):
        raise WebhookError(422, f"{name} holds a control character (NUL, newline, ...)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WebhookError(422, f"{name} holds a lone UTF-16 surrogate (not text)") from exc
    if name == "rev" and value.startswith("-"):
        raise WebhookError(422, "rev must not start with '-' (it would read as a git option)")
    return value


def parse_body(body: bytes) -> Landed:
    """The data version a request's body names; WebhookError (400: not a JSON object, 422: a
    field the receiver cannot use) otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WebhookError(400, f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise WebhookError(400, "body is JSON nested too deep") from exc
    if not isinstance(data, dict):
        raise WebhookError(400, "body must be a JSON object")
    missing = [k for k in ("path", "rev") if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise WebhookError(422, f"missing or empty string fields: {missing}")
    md5 = data.get("md5")
    if md5 is not None and (not isinstance(md5, str) or not re.fullmatch(r"[0-9a-f]{32}", md5)):
        raise WebhookError(422, "md5, when given, must be a 32-character hex string")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise WebhookError(422, "model, when given, must be a model name")
    if model is not None:
        _usable("model", model)
    return Landed(_usable("path", data["path"]), _usable("rev", data["rev"]), md5, model)


class NoSecret(CtflowsError, RuntimeError):
    """Neither the environment variable nor the Prefect Secret block holds a webhook secret."""

    kind = ErrorKind.BAD_INPUT


def webhook_secret(params: Params) -> str:
    """The shared secret, from ``triggers.webhook.secret_env`` or its Prefect Secret block."""
    hook = params.triggers.webhook
    secret = os.environ.get(hook.secret_env)
    if not secret and hook.secret_block and _prefect_api_configured():
        from prefect.blocks.system import Secret

        try:
            block: Any = Secret.load(hook.secret_block)
            secret = str(block.get())
        except ValueError:
            secret = None
    if not secret:
        where = f"${hook.secret_env}"
        if hook.secret_block:
            where += f" or the Prefect Secret block {hook.secret_block!r}"
        raise NoSecret(f"no webhook secret: set {where} (triggers.webhook in params)")
    return secret


def _prefect_api_configured() -> bool:
    """Without an API URL, Prefect would start a temporary server just to say "no block"."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def main(argv: list[str] | None = None) -> None:
    from deployments.receiver import main as serve_receiver

    serve_receiver(argv)


if __name__ == "__main__":
    main()

"""External services: deadlines on every call, errors that name the service, redacted secrets.

Every service ctflows talks to (MLflow tracking store and registry, the DVC remote, the
Kubernetes API, the Prefect API, Slack) gets a deadline from ``params.yaml`` (``timeouts``).
Past it the run fails with :class:`ServiceUnavailable`, which names the service and its
address with any credentials removed.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import TypeVar

from tasks.config import Params, TimeoutsParams
from tasks.errors import CtflowsError, ErrorKind

T = TypeVar("T")

# user:password@ (or user@ / :token@) in the authority of any URL, e.g.
# postgresql://user:pass@db/mlflow, https://user:token@mlflow.example; up to the authority's
# last @, so a password holding a raw @ (https://u:p@ss@host) is removed whole
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"<>]+@")
# secrets passed as query parameters: ?token=..., &password=..., X-Amz-Signature=...
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_\-]*(?:token|secret|password|passwd|pwd|key|signature|sig|auth)"
    r"[A-Za-z0-9_\-]*))=[^&\s'\"<>]+",
    re.IGNORECASE,
)
# Slack webhook paths are credentials themselves: incoming webhooks (services/) and Workflow
# Builder triggers (triggers/, workflows/)
_SLACK_HOOK = re.compile(r"(hooks\.slack\.com/(?:services|triggers|workflows)/)[A-Za-z0-9/_\-]+")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}={REDACTED}", text)
    return _SLACK_HOOK.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class ServiceUnavailable(CtflowsError, RuntimeError):
    """An external service did not answer within its deadline, or refused the connection."""

    kind = ErrorKind.UNAVAILABLE

    def __init__(self, service: str, address: str, cause: str, deadline: float | None = None):
        self.service, self.address = service, redact(address)
        self.cause, self.deadline = redact(cause), deadline
        within = f" within {deadline:g}s" if deadline is not None else ""
        super().__init__(
            f"{service} at {self.address} did not answer{within}: {self.cause}. "
            f"Check that {service} is running and reachable from here; the deadline is "
            "timeouts.* in params.yaml"
        )


# --- MLflow -----------------------------------------------------------------------------------

_MLFLOW_ENV = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


def mlflow_http_env(timeouts: TimeoutsParams) -> dict[str, str]:
    """MLflow's HTTP client settings bounding one call to about
    ``(mlflow_retries + 1) * mlflow + 2 ** mlflow_retries`` seconds.

    MLflow's own defaults (7 retries, 120 s timeout, backoff factor 2) retry for minutes.
    """
    return {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeouts.mlflow))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(timeouts.mlflow_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    }


def bound_mlflow(timeouts: TimeoutsParams) -> None:
    """Apply :func:`mlflow_http_env` to this process (read by MLflow at every request).

    Values the user exported already are kept: an explicit environment wins. Values set here
    follow the params of each run (a served process runs many).
    """
    for key, value in mlflow_http_env(timeouts).items():
        if key not in os.environ or os.environ[key] == _SET_BY_US.get(key):
            os.environ[key] = value
            _SET_BY_US[key] = value


_SET_BY_US: dict[str, str] = {}


def mlflow_call_bound(timeouts: TimeoutsParams, environ: dict[str, str] | None = None) -> float:
    """Seconds one MLflow HTTP call can take at most with the settings in effect."""
    env = os.environ if environ is None else environ
    wanted = mlflow_http_env(timeouts)
    timeout = float(env.get(_MLFLOW_ENV[0], wanted[_MLFLOW_ENV[0]]))
    retries = int(env.get(_MLFLOW_ENV[1], wanted[_MLFLOW_ENV[1]]))
    factor = float(env.get(_MLFLOW_ENV[2], wanted[_MLFLOW_ENV[2]]))
    backoff = sum(min(120.0, factor * 2**i) + 1.0 for i in range(retries))
    return (retries + 1) * timeout + backoff


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe_http(service: str, url: str, deadline: float) -> None:
    """GET ``url`` within ``deadline`` seconds; any HTTP answer counts as reachable.

    ServiceUnavailable on refusal, DNS failure or silence.
    """
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)), method="GET")
    if parts.username:  # user:password@ in the URI: sent as basic auth, as MLflow's client does
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        with urllib.request.urlopen(request, timeout=deadline):
            return
    except urllib.error.HTTPError:
        return  # it answered: reachable (auth and paths are the client's business)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailable(service, url, f"{type(exc).__name__}: {reason}", deadline) from exc


def probe_mlflow(uri: str, timeouts: TimeoutsParams) -> None:
    """For a tracking server (http/https): it answers ``/health`` within ``timeouts.mlflow``."""
    if is_http(uri):
        probe_http("MLflow tracking server", uri.rstrip("/") + "/health", timeouts.mlflow)


_CONNECTION_ERRORS = (
    "Max retries exceeded",
    "Connection refused",
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "timed out",
    "Failed to establish a new connection",
    "RemoteDisconnected",
    "Connection aborted",
    "Name or service not known",
    "Connection broken",  # the server died mid-answer (IncompleteRead, ChunkedEncodingError)
    "IncompleteRead",
    "Connection reset",
    "failed with exception",  # MLflow's wording for a request that got no HTTP answer
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def as_mlflow_outage(exc: BaseException, uri: str, deadline: float) -> ServiceUnavailable | None:
    """``exc`` as a ServiceUnavailable naming the MLflow server, when it is a connection
    failure to ``uri``; None for anything else (a real error, a missing model, ...)."""
    if not is_http(uri):
        return None
    for link in _chain(exc):
        if isinstance(link, ServiceUnavailable):
            return link
        text = f"{type(link).__name__}: {link}"
        if any(marker in text for marker in _CONNECTION_ERRORS):
            first = text.splitlines()[0][:300]
            return ServiceUnavailable("MLflow tracking server", uri, first, deadline)
    return None


# --- any blocking call --------------------------------------------------------------------------


def call_with_deadline(fn: Callable[[], T], deadline: float, service: str, address: str) -> T:
    """Run ``fn`` in a daemon thread (with this context: Prefect's run context included) and
    raise ServiceUnavailable if it has not returned within ``deadline`` seconds.

    For clients without a deadline of their own (DVC's remotes): the call is abandoned, not
    killed; a served flow run is its own process, which ends with the failed run.
    """
    context = contextvars.copy_context()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = context.run(fn)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"deadline-{service}", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise ServiceUnavailable(service, address, "no answer", deadline)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@contextlib.contextmanager
def prefect_deadline(timeouts: TimeoutsParams) -> Iterator[None]:
    """Prefect API calls made inside (secrets, concurrency slots) time out after
    ``timeouts.prefect`` seconds, with at most two retries."""
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    with temporary_settings(
        updates={PREFECT_API_REQUEST_TIMEOUT: timeouts.prefect, PREFECT_CLIENT_MAX_RETRIES: 2}
    ):
        yield


def outage_of(exc: BaseException, params: Params) -> ServiceUnavailable | None:
    """``exc`` as the outage of the service that caused it, or None when it is no outage."""
    from tasks.train import tracking_uri

    for link in _chain(exc):
        if isinstance(link, ServiceUnavailable):
            return link
    return as_mlflow_outage(exc, tracking_uri(params), mlflow_call_bound(params.timeouts))


def failure_text(exc: BaseException, params: Params) -> str:
    """One redacted line for the log, Slack and the outbox: the outage if it is one."""
    shown = outage_of(exc, params) or exc
    return redact(f"{type(shown).__name__}: {shown}")


class RedactingFilter(logging.Filter):
    """Removes URL credentials from a record's message and traceback before any handler
    formats it: Prefect logs a failed task's exception, whose text may hold a tracking URI."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(prefixes: tuple[str, ...] = ("prefect", "ctflows", "tasks", "flows")) -> None:
    """Add :class:`RedactingFilter` to every handler of the root logger and of the loggers
    under ``prefixes`` (console, files, Prefect's API log handler). Idempotent."""
    manager = logging.Logger.manager
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        obj
        for name, obj in list(manager.loggerDict.items())
        if isinstance(obj, logging.Logger) and name.split(".")[0] in prefixes
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())

"""One error base for ctflows: every error it raises on purpose says what kind of failure it is.

The kind decides what a caller does with it, in one place: the ``ctflows`` command maps it to its
exit code (bad input 2, failed 1, service unavailable 3), and the flow's failure notice names it.
Subclasses carry the facts (``DataValidationError(failures)``, ``GateRejected(report)``, ...);
this module imports nothing of ctflows, so every stage can root its errors here.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong, as a caller must react to it."""

    BAD_INPUT = "bad input"  # the caller's input or configuration: fix it; nothing was changed
    FAILED = "failed"  # the work was attempted and did not succeed
    UNAVAILABLE = "service unavailable"  # a service did not answer: retry when it is back


class CtflowsError(Exception):
    """Base of every error ctflows raises on purpose; ``kind`` says how to react to it."""

    kind: ErrorKind = ErrorKind.FAILED


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception: a ctflows error's own; connection and timeout errors are
    unavailable; anything else failed."""
    if isinstance(exc, CtflowsError):
        return exc.kind
    if isinstance(exc, ConnectionError | TimeoutError):
        return ErrorKind.UNAVAILABLE
    # HTTP clients' own connection and timeout errors (requests, urllib3, httpx) do not derive
    # from the builtin ones; they are named so throughout their class hierarchy.
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutException"}:
        return ErrorKind.UNAVAILABLE
    return ErrorKind.FAILED

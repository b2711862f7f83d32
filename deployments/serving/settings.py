"""The serving app's settings, from the pod's environment (the serving image has no
params.yaml), each checked when the app starts: a bad value stops the app with an error that
names the variable, what it holds and what is expected — never a server that starts and then
burns a core or drops every record.

- ``CTFLOWS_INFERENCE_LOG``: ``on`` (default) or ``off`` (also ``1/0``, ``true/false``,
  ``yes/no``);
- ``CTFLOWS_INFERENCE_LOG_URL``: where the log's files go (default ``.ctflows/inference-log``);
- ``CTFLOWS_INFERENCE_LOG_BUFFER_ROWS`` (10000): predictions held in memory at most, 1 to
  10,000,000;
- ``CTFLOWS_INFERENCE_LOG_FLUSH_ROWS`` (2000): a flush starts at this many, 1 to the buffer;
- ``CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS`` (5): and at least this often, 0.01 to 3600;
- ``DECISION_THRESHOLD`` (0.5): a score at or above it is decision 1 (a finite number);
- ``CTFLOWS_SERVING_MAX_BODY_BYTES`` (16 MiB): the largest /predict body, 1 KiB to 1 GiB;
  larger ones are answered 413 before they are read;
- ``CTFLOWS_SERVING_MAX_INFLIGHT_BYTES`` (4 x the max body): the bodies parsed and scored at
  once, in bytes (a parsed body takes ~15x its size); a request past it waits, holding only
  its raw body, until the ones ahead are answered.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T", int, float)
PREFIX = "CTFLOWS_INFERENCE_LOG"
ON = {"on", "1", "true", "yes"}
OFF = {"off", "0", "false", "no"}


class SettingError(ValueError):
    """A serving setting in the environment that the app cannot start with."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        self.variable, self.value, self.expected = variable, value, expected
        super().__init__(
            f"{variable}={value!r} is not a valid setting: expected {expected}; "
            f"fix or unset {variable} in the pod's environment"
        )


def _read(
    env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], low: T, high: T
) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    kind = "an integer" if parse is int else "a number"
    try:
        value = parse(raw.strip())
    except ValueError:
        raise SettingError(name, raw, f"{kind} from {low} to {high}") from None
    if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
        raise SettingError(name, raw, f"{kind} from {low} to {high}")
    return value


@dataclass(frozen=True)
class LogConfig:
    enabled: bool = True
    url: str = ".ctflows/inference-log"
    buffer_rows: int = 10_000
    flush_rows: int = 2_000
    flush_seconds: float = 5.0
    threshold: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogConfig:
        env = os.environ if environ is None else environ
        switch = env.get(PREFIX, "on").strip().lower() or "on"
        if switch not in ON | OFF:
            raise SettingError(PREFIX, env[PREFIX], "on or off")
        url = env.get(f"{PREFIX}_URL", cls.url)
        if not url.strip():
            raise SettingError(f"{PREFIX}_URL", url, "a folder or fsspec URL")
        buffer_rows = _read(env, f"{PREFIX}_BUFFER_ROWS", cls.buffer_rows, int, 1, 10_000_000)
        flush_rows = _read(
            env, f"{PREFIX}_FLUSH_ROWS", min(cls.flush_rows, buffer_rows), int, 1, buffer_rows
        )
        return cls(
            enabled=switch in ON,
            url=url,
            buffer_rows=buffer_rows,
            flush_rows=flush_rows,
            flush_seconds=_read(
                env, f"{PREFIX}_FLUSH_SECONDS", cls.flush_seconds, float, 0.01, 3600.0
            ),
            threshold=_read(env, "DECISION_THRESHOLD", cls.threshold, float, -1e308, 1e308),
        )


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 16 << 20
    max_inflight_bytes: int = 64 << 20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestLimits:
        env = os.environ if environ is None else environ
        body = _read(env, "CTFLOWS_SERVING_MAX_BODY_BYTES", cls.max_body_bytes, int, 1024, 1 << 30)
        inflight = _read(env, "CTFLOWS_SERVING_MAX_INFLIGHT_BYTES", 4 * body, int, body, 1 << 34)
        return cls(body, inflight)

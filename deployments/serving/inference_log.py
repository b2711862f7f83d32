"""The serving app's inference log and its Prometheus metrics.

Every prediction is recorded (its prediction id, the request id the server gave the request,
the caller's ``X-Request-ID``, time, model name and version, image digest, the input features
as received, the score and the decision) into a bounded in-memory buffer that a background
thread flushes to Parquet files at any fsspec URL, partitioned by day and model version::

    <url>/day=2026-11-24/model_version=7/part-<unix ns>-<random>.parquet

Ids: every request gets a fresh random ``request_id`` (32 hex digits) from the server; its
record ``i`` is the prediction ``<request_id>/<i>`` (a one-record request: ``<request_id>``),
so prediction ids never collide, whatever the callers send. The caller's ``X-Request-ID`` is
kept as it was sent in ``client_request_id`` (null when none was sent).

Recording never blocks and never raises into the request. A request is queued whole when it
fits in the buffer's free rows; a request larger than the whole buffer is queued when no
other such request waits, and written in parts of at most ``buffer_rows`` rows. Otherwise it
is dropped (``buffer_full``). When the sink raises, the records of the part it was writing are
dropped (``sink_error``); a record that cannot be written at all is dropped alone
(``unwritable_record``) and never takes the records flushed beside it along. Every loss is
counted (``/metrics``). Configured by environment (``deployments/serving/settings.py``), and
``MODEL_NAME``, ``MODEL_VERSION``, ``IMAGE_DIGEST``: the identity stamped on each record.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from deployments.serving.settings import LogConfig
from deployments.serving.telemetry import Telemetry

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "FsspecSink",
    "InferenceLog",
    "LogConfig",
    "ModelStamp",
    "Sink",
    "Telemetry",
    "arrow_schema",
    "client_request_id",
    "closing_lifespan",
    "new_request_id",
    "open_inference_log",
    "prediction_id",
]

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("ctflows.serving.inference_log")

SCHEMA_VERSION = "2"  # 2: request_id is the server's, client_request_id added
COLUMNS = (
    "prediction_id",
    "request_id",
    "client_request_id",
    "row",
    "batch_size",
    "time",
    "model_name",
    "model_version",
    "image_digest",
    "features",
    "score",
    "decision",
)


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("prediction_id", pa.string()),
            ("request_id", pa.string()),  # the server's, unique per request
            ("client_request_id", pa.string()),  # the caller's X-Request-ID, as sent
            ("row", pa.int32()),
            ("batch_size", pa.int32()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("image_digest", pa.string()),
            ("features", pa.string()),  # the record as received, JSON
            ("score", pa.float64()),
            ("decision", pa.int8()),
        ],
        metadata={"ctflows.inference_log.schema": SCHEMA_VERSION},
    )


def prediction_id(request_id: str, row: int, batch_size: int) -> str:
    """A single-record request is known by its request id; record ``i`` of a batch by ``id/i``."""
    return request_id if batch_size == 1 else f"{request_id}/{row}"


@dataclass(frozen=True)
class ModelStamp:
    model_name: str
    model_version: str
    image_digest: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelStamp:
        env = os.environ if environ is None else environ
        return cls(
            env.get("MODEL_NAME", ""),
            env.get("MODEL_VERSION", "unknown"),
            env.get("IMAGE_DIGEST", ""),
        )


class Sink(Protocol):
    def write(self, table: pa.Table, day: str, model_version: str) -> str: ...


class FsspecSink:
    """Writes one Parquet file per flush and partition, at any fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def write(self, table: pa.Table, day: str, model_version: str) -> str:
        import fsspec
        import pyarrow.parquet as pq

        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in model_version)
        name = f"part-{time.time_ns()}-{secrets.token_hex(4)}.parquet"
        path = f"{self.url}/day={day}/model_version={safe}/{name}"
        fs, fs_path = fsspec.core.url_to_fs(path)
        fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{fs_path}.tmp"
        with fs.open(tmp, "wb") as handle:
            pq.write_table(table, handle)
        fs.mv(tmp, fs_path)  # readers never see a half-written file under its final name
        return path


@dataclass(frozen=True)
class _Pending:
    request_id: str
    client_request_id: str | None
    at: float
    records: Sequence[Mapping[str, Any]]
    scores: Sequence[float]


class InferenceLog:
    """A bounded buffer of predictions, flushed by a background thread to a ``Sink``."""

    def __init__(
        self,
        config: LogConfig,
        stamp: ModelStamp,
        telemetry: Telemetry,
        sink: Sink | None = None,
    ) -> None:
        self.config, self.stamp, self.telemetry = config, stamp, telemetry
        self.sink: Sink = sink or FsspecSink(config.url)
        self._buffer: list[_Pending] = []
        self._rows = 0
        self._oversize = 0  # rows of the one request larger than the buffer, if queued
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="inference-log-flusher", daemon=True
            )
            self._thread.start()

    def record(
        self,
        request_id: str,
        records: Sequence[Mapping[str, Any]],
        scores: Sequence[float],
        at: float | None = None,
        client_request_id: str | None = None,
    ) -> bool:
        """Queue one request's predictions; False (and counted) when there is no room."""
        n = len(records)
        pending: _Pending | None = _Pending(
            request_id, client_request_id, at or time.time(), records, scores
        )
        with self._lock:
            if self._rows + n <= self.config.buffer_rows:
                self._rows += n
            elif n > self.config.buffer_rows and not self._oversize:
                self._oversize = n  # one request larger than the buffer may wait at a time
            else:
                pending = None
            if pending is not None:
                self._buffer.append(pending)
            wake = self._oversize or self._rows >= self.config.flush_rows
        if pending is None:
            self.telemetry.dropped.labels("buffer_full").inc(n)
            return False
        self.telemetry.buffered.inc(n)
        if wake:
            self._wake.set()
        return True

    def flush(self) -> int:
        """Write what is buffered now; returns the records written (lost ones are counted)."""
        with self._lock:
            batch, self._buffer, self._rows, self._oversize = self._buffer, [], 0, 0
        if not batch:
            return 0
        n = sum(len(p.records) for p in batch)
        self.telemetry.buffered.dec(n)
        written = 0
        try:
            parts, unwritable = self._tables(batch, self.config.buffer_rows)
        except Exception as exc:  # a bug here must not stop the flusher thread for good
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.telemetry.dropped.labels("unwritable_record").inc(n)
            log.exception("inference log could not build the tables of %d records", n)
            return 0
        if unwritable:
            self.telemetry.dropped.labels("unwritable_record").inc(unwritable)
            log.error("inference log dropped %d records it cannot write as JSON", unwritable)
        for (day, version), table in parts:
            try:
                self.sink.write(table, day, version)
            except Exception as exc:  # a failing sink loses records, never a prediction
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.telemetry.dropped.labels("sink_error").inc(table.num_rows)
                log.error("inference log lost %d records: %s", table.num_rows, self.last_error)
            else:
                written += table.num_rows
        self.telemetry.logged.inc(written)
        return written

    def _tables(
        self, batch: list[_Pending], part_rows: int
    ) -> tuple[list[tuple[tuple[str, str], pa.Table]], int]:
        """The batch as tables of at most ``part_rows`` rows per day, and how many records
        were left out because they cannot be written."""
        import numpy as np
        import pyarrow as pa

        stamp, threshold, encode = self.stamp, self.config.threshold, _json_encoder()
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        days: list[str] = []
        unwritable = 0
        for p in batch:
            size = len(p.records)
            micros = int(p.at * 1_000_000)
            day = _day(int(p.at // 86_400))
            encoded = [encode(r) for r in p.records]
            keep = [i for i, text in enumerate(encoded) if text is not None]
            unwritable += size - len(keep)
            if size == 1:
                columns["prediction_id"].extend([p.request_id] * len(keep))
            else:
                columns["prediction_id"].extend(f"{p.request_id}/{i}" for i in keep)
            columns["request_id"].extend([p.request_id] * len(keep))
            columns["client_request_id"].extend([p.client_request_id] * len(keep))
            columns["row"].extend(keep)
            columns["batch_size"].extend([size] * len(keep))
            columns["time"].extend([micros] * len(keep))
            columns["features"].extend(encoded[i] for i in keep)
            columns["score"].extend(p.scores[i] for i in keep)
            days.extend([day] * len(keep))
        total = len(columns["score"])
        if not total:
            return [], unwritable
        scores = np.asarray(columns["score"], dtype=float)
        columns["decision"] = list((scores >= threshold).astype(np.int8))
        columns["model_name"] = [stamp.model_name] * total
        columns["model_version"] = [stamp.model_version] * total
        columns["image_digest"] = [stamp.image_digest] * total
        columns["time"] = pa.array(columns["time"], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        table = pa.Table.from_pydict(columns, schema=arrow_schema())
        if len(set(days)) == 1:
            by_day = [(days[0], table)]
        else:
            day_arr = np.array(days)
            by_day = [(d, table.filter(pa.array(day_arr == d))) for d in sorted(set(days))]
        return [
            ((day, stamp.model_version), part.slice(start, part_rows))
            for day, part in by_day
            for start in range(0, part.num_rows, part_rows)
        ], unwritable

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            self.flush()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()


@functools.lru_cache(maxsize=8)
def _day(days_since_epoch: int) -> str:
    return datetime.fromtimestamp(days_since_epoch * 86_400, UTC).strftime("%Y-%m-%d")


def _json_encoder() -> Callable[[Any], str | None]:
    """One record as JSON text (orjson when installed, else the standard library), or None
    when it cannot be written as JSON: the standard library takes over what orjson refuses
    (integers past 64 bits, lone surrogates) so that such a record is still logged exactly."""
    strict = json.JSONEncoder(default=str, allow_nan=False).encode

    def careful(value: Any) -> str | None:
        try:
            return strict(value)
        except (TypeError, ValueError, RecursionError):
            return None

    try:
        import orjson
    except ImportError:
        return careful

    def fast(value: Any) -> str | None:
        try:
            return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        except TypeError:  # orjson.JSONEncodeError
            return careful(value)

    return fast


def new_request_id() -> str:
    """A fresh random id for one request: 32 hex digits, never a caller's."""
    return secrets.token_hex(16)


def client_request_id(header: str | None) -> str | None:
    """The caller's ``X-Request-ID`` as sent (None when absent); ValueError past 256
    characters or with control characters."""
    if header is None:
        return None
    if len(header) > 256 or not header.isprintable():
        raise ValueError("X-Request-ID must be at most 256 printable characters")
    return header


def open_inference_log(
    config: LogConfig | None = None, sink: Sink | None = None
) -> tuple[Telemetry, InferenceLog | None]:
    """The app's metrics and, unless switched off, its started inference log."""
    config = config or LogConfig.from_env()
    telemetry = Telemetry()
    if not config.enabled:
        return telemetry, None
    inference_log = InferenceLog(config, ModelStamp.from_env(), telemetry, sink)
    inference_log.start()
    return telemetry, inference_log


def closing_lifespan(inference_log: InferenceLog | None) -> Any:
    """A FastAPI lifespan that writes what is buffered when the server stops."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        if inference_log is not None:
            inference_log.close()

    return lifespan

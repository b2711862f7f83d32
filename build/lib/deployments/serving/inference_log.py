"""The serving app's inference log and its Prometheus metrics.

Every prediction is recorded (request id, time, model name and version, image digest, the
input features as received, the score and the decision) into a bounded in-memory buffer that a
background thread flushes to Parquet files at any fsspec URL, partitioned by day and model
version::

    <url>/day=2026-11-24/model_version=7/part-<unix ns>-<random>.parquet

Recording never blocks and never raises into the request: when the buffer is full the new
records are dropped, when the sink raises the flushed records are dropped, and both are
counted (``/metrics``). Configured by environment, because the serving image has no
params.yaml:

- ``CTFLOWS_INFERENCE_LOG``: ``on`` (default) or ``off``;
- ``CTFLOWS_INFERENCE_LOG_URL``: where the files go (default ``.ctflows/inference-log``;
  ``s3://bucket/prefix`` with s3fs installed);
- ``CTFLOWS_INFERENCE_LOG_BUFFER_ROWS`` (10000), ``CTFLOWS_INFERENCE_LOG_FLUSH_ROWS`` (2000),
  ``CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS`` (5);
- ``MODEL_NAME``, ``MODEL_VERSION``, ``IMAGE_DIGEST``: the identity stamped on each record;
- ``DECISION_THRESHOLD`` (0.5): a score at or above it is decision 1.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa
    from prometheus_client import CollectorRegistry

log = logging.getLogger("ctflows.serving.inference_log")

SCHEMA_VERSION = "1"
COLUMNS = (
    "prediction_id",
    "request_id",
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
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("prediction_id", pa.string()),
            ("request_id", pa.string()),
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
        p = "CTFLOWS_INFERENCE_LOG"
        try:
            return cls(
                enabled=env.get(p, "on").lower() not in {"off", "0", "false", "no"},
                url=env.get(f"{p}_URL", cls.url),
                buffer_rows=int(env.get(f"{p}_BUFFER_ROWS", cls.buffer_rows)),
                flush_rows=int(env.get(f"{p}_FLUSH_ROWS", cls.flush_rows)),
                flush_seconds=float(env.get(f"{p}_FLUSH_SECONDS", cls.flush_seconds)),
                threshold=float(env.get("DECISION_THRESHOLD", cls.threshold)),
            )
        except ValueError as exc:
            raise ValueError(f"invalid {p}_* or DECISION_THRESHOLD setting: {exc}") from exc


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


class Telemetry:
    """Prometheus metrics of the serving app, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ctflows_predict_requests", "Prediction requests by HTTP status", ["status"], registry=r
        )
        self.predictions = Counter("ctflows_predictions", "Records scored by /predict", registry=r)
        self.latency = Histogram(
            "ctflows_predict_latency_seconds",
            "Time to answer /predict",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.logged = Counter(
            "ctflows_inference_log_records", "Predictions written to the inference log", registry=r
        )
        self.dropped = Counter(
            "ctflows_inference_log_dropped_records",
            "Predictions the inference log lost, by reason",
            ["reason"],
            registry=r,
        )
        for reason in ("buffer_full", "sink_error"):
            self.dropped.labels(reason)
        self.buffered = Gauge(
            "ctflows_inference_log_buffered_records",
            "Predictions waiting to be written",
            registry=r,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


@dataclass(frozen=True)
class _Pending:
    request_id: str
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
    ) -> bool:
        """Queue one request's predictions; False (and counted) when the buffer is full."""
        n = len(records)
        with self._lock:
            if self._rows + n > self.config.buffer_rows:
                full = True
            else:
                full = False
                self._buffer.append(_Pending(request_id, at or time.time(), records, scores))
                self._rows += n
                wake = self._rows >= self.config.flush_rows
        if full:
            self.telemetry.dropped.labels("buffer_full").inc(n)
            return False
        self.telemetry.buffered.inc(n)
        if wake:
            self._wake.set()
        return True

    def flush(self) -> int:
        """Write what is buffered now; returns the records written (lost ones are counted)."""
        with self._lock:
            batch, self._buffer, self._rows = self._buffer, [], 0
        if not batch:
            return 0
        n = sum(len(p.records) for p in batch)
        self.telemetry.buffered.dec(n)
        written = 0
        try:
            for (day, version), table in self._tables(batch).items():
                self.sink.write(table, day, version)
                written += table.num_rows
        except Exception as exc:  # a failing sink loses records, never a prediction
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.telemetry.dropped.labels("sink_error").inc(n - written)
            log.error("inference log lost %d records: %s", n - written, self.last_error)
        self.telemetry.logged.inc(written)
        return written

    def _tables(self, batch: list[_Pending]) -> dict[tuple[str, str], pa.Table]:
        import numpy as np
        import pyarrow as pa

        stamp, threshold, encode = self.stamp, self.config.threshold, _json_encoder()
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        days: list[str] = []
        for p in batch:
            size = len(p.records)
            micros = int(p.at * 1_000_000)
            day = _day(int(p.at // 86_400))
            if size == 1:
                columns["prediction_id"].append(p.request_id)
            else:
                columns["prediction_id"].extend(f"{p.request_id}/{i}" for i in range(size))
            columns["request_id"].extend([p.request_id] * size)
            columns["row"].extend(range(size))
            columns["batch_size"].extend([size] * size)
            columns["time"].extend([micros] * size)
            columns["features"].extend(encode(r) for r in p.records)
            columns["score"].extend(p.scores)
            days.extend([day] * size)
        total = len(columns["score"])
        scores = np.asarray(columns["score"], dtype=float)
        columns["decision"] = list((scores >= threshold).astype(np.int8))
        columns["model_name"] = [stamp.model_name] * total
        columns["model_version"] = [stamp.model_version] * total
        columns["image_digest"] = [stamp.image_digest] * total
        columns["time"] = pa.array(columns["time"], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        table = pa.Table.from_pydict(columns, schema=arrow_schema())
        if len(set(days)) == 1:
            return {(days[0], stamp.model_version): table}
        day_arr = np.array(days)
        return {
            (d, stamp.model_version): table.filter(pa.array(day_arr == d))
            for d in sorted(set(days))
        }

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


def _json_encoder() -> Callable[[Any], str]:
    """One record as JSON text: orjson when installed, else the standard library."""
    try:
        import orjson

        def fast(value: Any) -> str:
            return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()

        return fast
    except ImportError:
        return json.JSONEncoder(default=str).encode


def new_request_id(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it sent a usable one, else a fresh random id."""
    if header and 0 < len(header) <= 128 and header.isprintable():
        return header
    return secrets.token_hex(16)


@contextmanager
def tracked(telemetry: Telemetry) -> Iterator[None]:
    """Count one /predict request by its final status and observe its latency."""
    started, status = time.perf_counter(), "200"
    try:
        yield
    except Exception as exc:
        status = str(getattr(exc, "status_code", 500))
        raise
    finally:
        telemetry.requests.labels(status).inc()
        telemetry.latency.observe(time.perf_counter() - started)


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

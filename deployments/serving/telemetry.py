"""The serving app's Prometheus metrics, and the middleware that counts every /predict answer.

Requests are counted by the status they were answered with, whatever answered them: the
endpoint, a refusal of the request before it reached the endpoint (413, 422, 405 ...) or an
error (500).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DROP_REASONS = ("buffer_full", "sink_error", "unwritable_record")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.buffered = Gauge(
            "ctflows_inference_log_buffered_records",
            "Predictions waiting to be written",
            registry=r,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class CountRequests:
    """ASGI middleware: every answer on ``path`` counted by status, its latency observed."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry, path: str = "/predict") -> None:
        self.app, self.telemetry, self.path = app, telemetry, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500  # what answers an exception that escapes

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.telemetry.requests.labels(str(status)).inc()
            self.telemetry.latency.observe(time.perf_counter() - started)

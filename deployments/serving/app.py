"""The model server the serving image runs: one MLflow model behind a small HTTP API.

    MODEL_URI=/model uvicorn --factory deployments.serving.app:create_app --port 8080

- ``GET /health``: the process is up (liveness).
- ``GET /ready``: 200 only once the model is loaded *and* has answered a probe prediction
  built from its signature (readiness); 503 with the reason until then.
- ``POST /predict``: ``{"records": [{feature: value, ...}, ...]}`` -> ``{"scores": [...]}``
  (P(positive), a regressor's value, or a multiclass model's top probability with
  ``classes`` and ``probabilities``), the server's ``request_id``, one ``prediction_ids``
  entry per record (what labels join on) and the caller's ``X-Request-ID`` as
  ``client_request_id``. Each record is checked against the model's signature first
  (``deployments/serving/validation.py``): 422 naming every bad record and field. A body past
  ``CTFLOWS_SERVING_MAX_BODY_BYTES`` is 413 (``deployments/serving/settings.py``).
- ``GET /model``: the model's identity (from the pod's ctflows.io annotations via env) and
  its signature.
- ``GET /metrics``: Prometheus text: requests by status, latency, logged and dropped log
  records.

Every prediction goes to the inference log (``deployments/serving/inference_log.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from deployments.serving.inference_log import (
    InferenceLog,
    LogConfig,
    Sink,
    client_request_id,
    closing_lifespan,
    new_request_id,
    open_inference_log,
)
from deployments.serving.settings import RequestLimits
from deployments.serving.telemetry import CountRequests, Telemetry
from deployments.serving.validation import (
    RecordSchema,
    RecordsRefused,
    column_arrays,
    parse_body,
)

log = logging.getLogger("ctflows.serving")
PREDICT_BODY = {  # what /docs shows; the body is read and checked by the endpoint itself
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["records"],
                "properties": {
                    "records": {"type": "array", "minItems": 1, "items": {"type": "object"}}
                },
            }
        }
    },
}


class ModelHolder:
    """Loads the model in the background; readiness reflects a successful probe prediction."""

    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self.model: Any = None
        self.columns: list[str] = []
        self.schema = RecordSchema(())
        self.error: str | None = "loading" if uri else "MODEL_URI is not set"
        self.lock = threading.Lock()

    def load(self) -> None:
        try:
            import mlflow
            import pandas as pd

            model = mlflow.sklearn.load_model(self.uri)
            schema = model_schema(str(self.uri))
            columns = [c.name for c in schema.inputs] if schema else []
            record_schema = RecordSchema.from_mlflow(schema)
            probe = {
                c.name: (0 if str(c.type) != "DataType.string" else "")
                for c in (schema.inputs if schema else [])
            }
            scores, _ = model_scores(model, pd.DataFrame([probe]))
            if len(scores) != 1:
                raise RuntimeError("the probe prediction returned no score")
            with self.lock:
                self.model, self.columns, self.error = model, columns, None
                self.schema = record_schema
            log.info("model %s loaded and answered a probe prediction", self.uri)
        except Exception as exc:  # readiness must report why, not crash the server
            with self.lock:
                self.error = f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", self.uri, self.error)

    def start(self) -> None:
        if self.uri:
            threading.Thread(target=self.load, daemon=True).start()


def model_schema(uri: str) -> Any:
    """The input schema of the model's signature, read from its MLmodel file alone: a pod has
    no tracking store (``mlflow.models.get_model_info`` would ask one for the logged model)."""
    from mlflow.models import Model

    signature = Model.load(uri).signature
    return signature.inputs if signature else None


def create_app(
    model_uri: str | None = None,
    load_in_background: bool = True,
    log_config: LogConfig | None = None,
    log_sink: Sink | None = None,
    limits: RequestLimits | None = None,
) -> FastAPI:
    limits = limits or RequestLimits.from_env()  # settings are checked before anything starts
    holder = ModelHolder(model_uri if model_uri is not None else os.environ.get("MODEL_URI"))
    telemetry, inference_log = open_inference_log(log_config, log_sink)
    app = FastAPI(title="ctflows model server", lifespan=closing_lifespan(inference_log))
    app.add_middleware(CountRequests, telemetry=telemetry)
    app.state.holder = holder
    app.state.telemetry, app.state.inference_log = telemetry, inference_log
    budget = ByteBudget(limits.max_inflight_bytes)
    if load_in_background:
        holder.start()
    else:
        holder.load()

    @app.get("/health")
    async def health() -> dict[str, str]:  # on the event loop: no worker thread needed
        return {"status": "alive"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        if holder.error is None:
            return JSONResponse({"status": "ready", "model": holder.uri})
        return JSONResponse({"status": "not ready", "reason": holder.error}, status_code=503)

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        keys = ("MODEL_NAME", "MODEL_VERSION", "MLFLOW_RUN_ID", "DATA_MD5", "IMAGE_DIGEST")
        return {  # the manifests fill these from the pod's annotations (Downward API)
            "uri": holder.uri,
            **{k.lower(): os.environ.get(k) or None for k in keys},
            "features": holder.columns,
            "signature": [{"name": c.name, "type": c.type} for c in holder.schema.columns],
        }

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(telemetry.render(), media_type="text/plain; version=0.0.4")

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request) -> Response:
        try:
            caller_id = client_request_id(request.headers.get("x-request-id"))
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        if holder.error is not None:
            return JSONResponse({"detail": f"model not ready: {holder.error}"}, status_code=503)
        declared = _content_length(request)
        if declared is not None and declared > limits.max_body_bytes:
            return _too_large(limits)
        body = await _read_body(request, limits.max_body_bytes)
        if body is None:
            return _too_large(limits)
        # a body grows ~15x once parsed: only so many bytes of bodies are parsed at once, and
        # on a worker thread, so that /health stays answered meanwhile
        async with budget.hold(len(body)):
            return await run_in_threadpool(
                _answer, holder, inference_log, telemetry, body, caller_id
            )

    return app


def _answer(
    holder: ModelHolder,
    inference_log: InferenceLog | None,
    telemetry: Telemetry,
    body: bytes,
    caller_id: str | None,
) -> Response:
    import pandas as pd

    try:
        checked = holder.schema.check(parse_body(body))
    except RecordsRefused as refused:
        return JSONResponse(refused.body(), status_code=422)
    del body
    names = holder.schema.names
    if names:
        frame = pd.DataFrame(column_arrays(holder.schema, checked), columns=names, copy=False)
    else:  # a model without a signature is given the records as sent
        frame = pd.DataFrame(checked.records)
    try:
        scores, extra = model_scores(holder.model, frame)
    except (ValueError, TypeError) as exc:
        return JSONResponse({"detail": f"cannot score these records: {exc}"}, status_code=422)
    request_id = new_request_id()
    if inference_log is not None:
        inference_log.record(request_id, checked.records, scores, client_request_id=caller_id)
    telemetry.predictions.inc(len(scores))
    size = len(scores)
    ids = [request_id] if size == 1 else [f"{request_id}/{i}" for i in range(size)]
    answer = {
        "scores": scores,
        "request_id": request_id,
        "client_request_id": caller_id,
        "prediction_ids": ids,
        **extra,
    }
    return Response(json.dumps(answer, allow_nan=False), media_type="application/json")


class ByteBudget:
    """At most ``limit`` bytes of request bodies parsed and scored at once; the rest wait
    (holding their raw bytes only), so memory stays bounded under load."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past ``limit`` bytes (never read further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limits: RequestLimits) -> JSONResponse:
    detail = (
        f"the body is larger than {limits.max_body_bytes} bytes "
        "(CTFLOWS_SERVING_MAX_BODY_BYTES): send the records in smaller batches"
    )
    return JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})


def model_scores(model: Any, frame: Any) -> tuple[list[float], dict[str, Any]]:
    """One score per record, by task: P(positive) for a binary classifier, the predicted value
    for a regressor; for a multiclass classifier the probability of the decided class, with
    the decided ``classes`` and every class's ``probabilities`` as extra fields."""
    if not hasattr(model, "predict_proba"):  # a regressor
        return [float(v) for v in model.predict(frame)], {}
    proba = model.predict_proba(frame)
    if proba.shape[1] == 2:
        return [float(s) for s in proba[:, 1]], {}
    classes = list(getattr(model, "classes_", range(proba.shape[1])))
    best = proba.argmax(axis=1)
    extra = {
        "classes": [_plain(classes[i]) for i in best],
        "probabilities": [[float(p) for p in row] for row in proba],
    }
    return [float(row[i]) for row, i in zip(proba, best, strict=True)], extra


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value

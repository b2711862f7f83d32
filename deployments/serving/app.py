"""The model server the serving image runs: one MLflow model behind a small HTTP API.

    MODEL_URI=/model uvicorn --factory deployments.serving.app:create_app --port 8080

- ``GET /health``: the process is up (liveness).
- ``GET /ready``: 200 only once the model is loaded *and* has answered a probe prediction
  built from its signature (readiness); 503 with the reason until then.
- ``POST /predict``: ``{"records": [{feature: value, ...}, ...]}`` -> ``{"scores": [...]}``
  (P(positive), a regressor's value, or a multiclass model's top probability with
  ``classes`` and ``probabilities``).
- ``GET /model``: the model's identity (from the pod's ctflows.io annotations via env).
- ``GET /metrics``: Prometheus text: requests, latency, logged and dropped log records.

Every prediction goes to the inference log (``deployments/serving/inference_log.py``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from deployments.serving.inference_log import (
    LogConfig,
    Sink,
    closing_lifespan,
    new_request_id,
    open_inference_log,
    tracked,
)

log = logging.getLogger("ctflows.serving")


class PredictRequest(BaseModel):
    records: list[dict[str, Any]]


class ModelHolder:
    """Loads the model in the background; readiness reflects a successful probe prediction."""

    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self.model: Any = None
        self.columns: list[str] = []
        self.error: str | None = "loading" if uri else "MODEL_URI is not set"
        self.lock = threading.Lock()

    def load(self) -> None:
        try:
            import mlflow
            import pandas as pd

            model = mlflow.sklearn.load_model(self.uri)
            schema = model_schema(str(self.uri))
            columns = [c.name for c in schema.inputs] if schema else []
            probe = {
                c.name: (0 if str(c.type) != "DataType.string" else "")
                for c in (schema.inputs if schema else [])
            }
            scores, _ = model_scores(model, pd.DataFrame([probe]))
            if len(scores) != 1:
                raise RuntimeError("the probe prediction returned no score")
            with self.lock:
                self.model, self.columns, self.error = model, columns, None
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
) -> FastAPI:
    holder = ModelHolder(model_uri if model_uri is not None else os.environ.get("MODEL_URI"))
    telemetry, inference_log = open_inference_log(log_config, log_sink)
    app = FastAPI(title="ctflows model server", lifespan=closing_lifespan(inference_log))
    app.state.holder = holder
    app.state.telemetry, app.state.inference_log = telemetry, inference_log
    if load_in_background:
        holder.start()
    else:
        holder.load()

    @app.get("/health")
    def health() -> dict[str, str]:
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
        }

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(telemetry.render(), media_type="text/plain; version=0.0.4")

    @app.post("/predict")
    def predict(request: PredictRequest, x_request_id: str | None = Header(None)) -> dict[str, Any]:
        with tracked(telemetry):
            scores, extra = _predict(request)
            request_id = new_request_id(x_request_id)
            if inference_log is not None:
                inference_log.record(request_id, request.records, scores)
        telemetry.predictions.inc(len(scores))
        return {"scores": scores, "request_id": request_id, **extra}

    def _predict(request: PredictRequest) -> tuple[list[float], dict[str, Any]]:
        if holder.error is not None:
            raise HTTPException(503, f"model not ready: {holder.error}")
        import pandas as pd

        missing = sorted(set(holder.columns) - set().union(*map(set, request.records or [{}])))
        if missing:
            raise HTTPException(422, f"records lack features {missing}")
        try:
            return model_scores(holder.model, pd.DataFrame(request.records))
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, f"cannot score these records: {exc}") from exc

    return app


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

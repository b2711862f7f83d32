"""The serving app's inference log: each prediction once, losses counted, nothing blocks."""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from deployments.serving.app import create_app
from deployments.serving.inference_log import SCHEMA_VERSION, LogConfig
from tasks.data import make_batch
from tasks.train import train_model
from tests.helpers import small_params


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import mlflow
    from mlflow.models import infer_signature

    params = small_params(tmp_path_factory.mktemp("serving-log"))
    batch = make_batch(1, 2_000)
    model = train_model(batch, params)
    sample = batch[params.data.features].head(50)
    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(sample, model.predict_proba(sample)[:, 1]),
        pip_requirements=["scikit-learn"],
        serialization_format="cloudpickle",
    )
    return str(path), model, params


def read_log(root: Path):
    import pandas as pd

    files = sorted(root.rglob("*.parquet"))
    assert all(re.search(r"day=\d{4}-\d\d-\d\d/model_version=[^/]+/part-", str(f)) for f in files)
    for f in files:
        assert (
            pq.read_schema(f).metadata[b"ctflows.inference_log.schema"] == SCHEMA_VERSION.encode()
        )
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_concurrent_requests_log_every_prediction_exactly_once(saved_model, tmp_path, monkeypatch):
    uri, model, params = saved_model
    monkeypatch.setenv("MODEL_NAME", "churn-classifier")
    monkeypatch.setenv("MODEL_VERSION", "7")
    monkeypatch.setenv("IMAGE_DIGEST", "sha256:" + "ab" * 32)
    config = LogConfig(url=str(tmp_path / "log"), flush_rows=50, flush_seconds=0.05)
    app = create_app(uri, load_in_background=False, log_config=config)
    rows = make_batch(3, 600)
    records = rows[params.data.features].to_dict(orient="records")
    sizes = [1, 3, 7, 1, 20]  # production sends mixed batch sizes
    requests, start = [], 0
    while start < len(records):
        size = sizes[len(requests) % len(sizes)]
        requests.append((f"req-{len(requests)}", records[start : start + size]))
        start += size

    with TestClient(app) as client:

        def send(item):
            rid, batch = item
            answer = client.post("/predict", json={"records": batch}, headers={"X-Request-ID": rid})
            assert answer.status_code == 200, answer.text
            return rid, answer.json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = dict(pool.map(send, requests))
        text = client.get("/metrics").text
    # leaving the client ran the app's shutdown: the buffer is flushed

    log = read_log(tmp_path / "log")
    assert len(log) == len(records) and log["prediction_id"].is_unique
    expected = {}
    for rid, batch in requests:
        assert answers[rid]["request_id"] == rid
        for i, (rec, s) in enumerate(zip(batch, answers[rid]["scores"], strict=True)):
            expected[rid if len(batch) == 1 else f"{rid}/{i}"] = (rec, s)
    assert set(log["prediction_id"]) == set(expected)
    for row in log.itertuples():
        rec, s = expected[row.prediction_id]
        assert json.loads(row.features) == json.loads(json.dumps(rec))
        assert row.score == pytest.approx(s) and row.decision == int(s >= 0.5)
    assert set(log["model_version"]) == {"7"} and set(log["model_name"]) == {"churn-classifier"}
    assert log["image_digest"].str.startswith("sha256:").all()
    np.testing.assert_allclose(
        np.sort(log["score"]), np.sort(model.predict_proba(rows)[:, 1]), rtol=1e-9
    )
    assert metric(text, 'ctflows_predict_requests_total{status="200"}') == len(requests)
    assert metric(text, "ctflows_predictions_total") == len(records)
    assert metric(text, "ctflows_predict_latency_seconds_count") == len(requests)


class RaisingSink:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, table, day, model_version):
        self.calls += 1
        raise OSError("bucket unreachable")


def test_a_raising_sink_loses_records_but_no_prediction_and_says_how_many(saved_model):
    uri, _, params = saved_model
    sink = RaisingSink()
    config = LogConfig(url="unused://", flush_rows=10, flush_seconds=0.05)
    app = create_app(uri, load_in_background=False, log_config=config, log_sink=sink)
    records = make_batch(4, 90)[params.data.features].to_dict(orient="records")
    with TestClient(app) as client:
        for i in range(0, 90, 3):
            answer = client.post("/predict", json={"records": records[i : i + 3]})
            assert answer.status_code == 200 and len(answer.json()["scores"]) == 3
    text = TestClient(app).get("/metrics").text
    assert sink.calls >= 1
    assert metric(text, 'ctflows_inference_log_dropped_records_total{reason="sink_error"}') == 90
    assert metric(text, "ctflows_inference_log_records_total") == 0
    assert metric(text, "ctflows_predictions_total") == 90
    assert "bucket unreachable" in (app.state.inference_log.last_error or "")


class BlockedSink:
    """A sink that hangs until released: the buffer fills, requests must not wait on it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.rows = 0

    def write(self, table, day, model_version):
        self.release.wait(30)
        self.rows += table.num_rows
        return "blocked://"


def test_a_full_buffer_drops_and_counts_without_blocking_predictions(saved_model):
    uri, _, params = saved_model
    sink = BlockedSink()
    config = LogConfig(url="unused://", buffer_rows=20, flush_rows=5, flush_seconds=0.01)
    app = create_app(uri, load_in_background=False, log_config=config, log_sink=sink)
    records = make_batch(5, 100)[params.data.features].to_dict(orient="records")
    client = TestClient(app)
    for i in range(0, 100, 5):
        assert client.post("/predict", json={"records": records[i : i + 5]}).status_code == 200
    text = client.get("/metrics").text
    dropped = metric(text, 'ctflows_inference_log_dropped_records_total{reason="buffer_full"}')
    assert dropped > 0
    sink.release.set()
    app.state.inference_log.close()
    text = client.get("/metrics").text
    logged = metric(text, "ctflows_inference_log_records_total")
    assert logged == sink.rows and logged + dropped == 100


def test_log_off_still_serves_and_counts_requests(saved_model, tmp_path):
    uri, _, params = saved_model
    config = LogConfig(enabled=False, url=str(tmp_path / "log"))
    client = TestClient(create_app(uri, load_in_background=False, log_config=config))
    records = make_batch(6, 4)[params.data.features].to_dict(orient="records")
    assert client.post("/predict", json={"records": records}).status_code == 200
    assert client.post("/predict", json={"records": [{"age": 1}]}).status_code == 422
    text = client.get("/metrics").text
    assert metric(text, 'ctflows_predict_requests_total{status="422"}') == 1
    assert not (tmp_path / "log").exists()


def test_log_config_from_env_names_a_bad_setting():
    assert LogConfig.from_env({"CTFLOWS_INFERENCE_LOG": "off"}).enabled is False
    assert LogConfig.from_env({"CTFLOWS_INFERENCE_LOG_URL": "s3://b/p"}).url == "s3://b/p"
    with pytest.raises(ValueError, match="CTFLOWS_INFERENCE_LOG"):
        LogConfig.from_env({"CTFLOWS_INFERENCE_LOG_BUFFER_ROWS": "lots"})

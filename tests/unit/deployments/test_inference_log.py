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
        answer = answers[rid]
        assert answer["client_request_id"] == rid and answer["request_id"] != rid
        assert len(answer["prediction_ids"]) == len(batch)
        for i, (rec, s) in enumerate(zip(batch, answer["scores"], strict=True)):
            expected[answer["prediction_ids"][i]] = (rec, s, rid, answer["request_id"])
    assert set(log["prediction_id"]) == set(expected)
    for row in log.itertuples():
        rec, s, rid, server_id = expected[row.prediction_id]
        assert row.client_request_id == rid and row.request_id == server_id
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


def test_one_unwritable_record_is_dropped_alone_and_a_huge_integer_is_logged_exactly(
    saved_model, tmp_path
):
    uri, _, params = saved_model
    config = LogConfig(url=str(tmp_path / "log"), flush_rows=10_000, flush_seconds=3600)
    app = create_app(uri, load_in_background=False, log_config=config)
    records = make_batch(7, 300)[params.data.features].to_dict(orient="records")
    with TestClient(app) as client:
        for i in range(0, 300, 30):
            assert client.post("/predict", json={"records": records[i : i + 30]}).status_code == 200
        huge = {**records[0], "customer_id": 2**64}  # a field the model does not use
        answer = client.post("/predict", json={"records": [huge]})
        assert answer.status_code == 200, answer.text
        surrogate = {**records[0], "note": "\ud800"}  # a lone surrogate, as JSON allows
        body = json.dumps({"records": [surrogate]})  # "\\ud800", escaped as JSON sends it
        assert client.post("/predict", content=body).status_code == 200
        too_big = {**records[0], "age": 2**64}  # a long column of the signature
        assert client.post("/predict", json={"records": [too_big]}).status_code == 422
        # what no JSON encoder can write, queued straight into the log beside the others
        app.state.inference_log.record("direct", [{"x": 2**64, "y": float("nan")}], [0.5])
    text = TestClient(app).get("/metrics").text
    log = read_log(tmp_path / "log")
    assert len(log) == 302
    notes = [json.loads(f).get("note") for f in log["features"]]
    assert "\ud800" in notes
    logged = json.loads(
        log.loc[log["prediction_id"] == answer.json()["request_id"], "features"].iloc[0]
    )
    assert logged["customer_id"] == 2**64
    assert (
        metric(text, 'ctflows_inference_log_dropped_records_total{reason="unwritable_record"}') == 1
    )
    assert metric(text, 'ctflows_inference_log_dropped_records_total{reason="sink_error"}') == 0
    assert metric(text, "ctflows_inference_log_records_total") == 302


def test_a_batch_larger_than_the_buffer_is_written_in_parts(saved_model, tmp_path):
    uri, _, params = saved_model
    config = LogConfig(url=str(tmp_path / "log"), buffer_rows=50, flush_rows=20, flush_seconds=60)
    app = create_app(uri, load_in_background=False, log_config=config)
    records = make_batch(8, 130)[params.data.features].to_dict(orient="records")
    with TestClient(app) as client:
        answer = client.post("/predict", json={"records": records})
        assert answer.status_code == 200
    log = read_log(tmp_path / "log")
    assert sorted(log["prediction_id"]) == sorted(answer.json()["prediction_ids"])
    files = sorted((tmp_path / "log").rglob("*.parquet"))
    assert len(files) == 3 and max(pq.read_metadata(f).num_rows for f in files) <= 50
    text = TestClient(app).get("/metrics").text
    assert metric(text, 'ctflows_inference_log_dropped_records_total{reason="buffer_full"}') == 0


def test_one_request_larger_than_the_buffer_waits_at_a_time():
    from deployments.serving.inference_log import InferenceLog, ModelStamp, Telemetry

    telemetry = Telemetry()
    sink = BlockedSink()
    sink.release.set()
    log = InferenceLog(
        LogConfig(buffer_rows=10, flush_rows=10), ModelStamp("m", "1", ""), telemetry, sink
    )
    big = [{"a": i} for i in range(25)]
    assert log.record("r1", big, [0.1] * 25)
    assert log.record("r2", big[:10], [0.1] * 10)  # the buffer's own rows are still free
    assert not log.record("r3", big, [0.1] * 25)  # a second one past the buffer: dropped
    assert log.flush() == 35 and sink.rows == 35
    assert log.record("r4", big, [0.1] * 25)  # room again once written


def test_every_prediction_gets_its_own_id_and_the_callers_id_is_kept(saved_model, tmp_path):
    uri, _, params = saved_model
    config = LogConfig(url=str(tmp_path / "log"), flush_seconds=60)
    app = create_app(uri, load_in_background=False, log_config=config)
    records = make_batch(9, 10)[params.data.features].to_dict(orient="records")
    with TestClient(app) as client:
        answers = [
            client.post(
                "/predict", json={"records": records[:1]}, headers={"X-Request-ID": "batch-job"}
            )
            for _ in range(5)
        ]
        answers.append(
            client.post(
                "/predict", json={"records": records[:1]}, headers={"X-Request-ID": "job7/0"}
            )
        )
        answers.append(
            client.post("/predict", json={"records": records[:2]}, headers={"X-Request-ID": "job7"})
        )
        answers.append(client.post("/predict", json={"records": records[:1]}))
    assert all(a.status_code == 200 for a in answers)
    ids = [pid for a in answers for pid in a.json()["prediction_ids"]]
    assert len(ids) == len(set(ids)) == 9
    log = read_log(tmp_path / "log")
    assert sorted(log["prediction_id"]) == sorted(ids) and log["prediction_id"].is_unique
    callers = log.groupby("client_request_id", dropna=False).size().to_dict()
    assert {k: v for k, v in callers.items() if isinstance(k, str)} == {
        "batch-job": 5,
        "job7/0": 1,
        "job7": 2,
    }
    assert log["client_request_id"].isna().sum() == 1
    assert answers[0].json()["client_request_id"] == "batch-job"
    assert answers[-1].json()["client_request_id"] is None

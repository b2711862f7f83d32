"""The serving app as the image runs it: a uvicorn process of its own, on a multiclass model
of scikit-learn's wine data, attacked with what callers get wrong."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT
from tests.oci_registry import free_port

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def wine_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier

    wine = load_wine(as_frame=True)
    features = wine.data.rename(columns=lambda c: c.replace("/", "_"))
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(features, wine.target)
    path = tmp_path_factory.mktemp("wine") / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features.head(20), model.predict_proba(features.head(20))),
        pip_requirements=["scikit-learn"],
        serialization_format="cloudpickle",
    )
    return str(path), features


def server_env(tmp: Path, model_uri: str, **settings: str) -> dict[str, str]:
    """Only what the pod would have: nothing of the test process leaks in."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "PYTHONPATH": str(ROOT),
        "MODEL_URI": model_uri,
        "MODEL_NAME": "wine",
        "MODEL_VERSION": "3",
        "CTFLOWS_INFERENCE_LOG_URL": str(tmp / "log"),
        **settings,
    }


def start(tmp: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "--factory", "deployments.serving.app:create_app"]
    return subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{self.url}/predict", body, {"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as resp:
            return resp.status, resp.read()


@pytest.fixture
def server(tmp_path: Path, wine_model) -> Iterator[Server]:
    port = free_port()
    env = server_env(
        tmp_path,
        wine_model[0],
        CTFLOWS_SERVING_MAX_BODY_BYTES=str(MAX_BODY),
        CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS="60",
    )
    proc = start(tmp_path, env, port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "the serving app never became ready"
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    running = Server(url, port, proc, tmp_path / "log")
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def stop(server: Server) -> pd.DataFrame:
    """SIGTERM as Kubernetes sends it: the app writes what it buffered; the log, read back."""
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (lifespan included), then re-raises the signal
    assert server.proc.wait(timeout=30) in {0, -signal.SIGTERM}
    files = sorted(server.log.rglob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def records(features: pd.DataFrame, n: int, start: int = 0) -> list[dict]:
    return json.loads(features.iloc[start : start + n].to_json(orient="records"))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "0"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "-1"),
        ("CTFLOWS_INFERENCE_LOG_BUFFER_ROWS", "0"),
        ("CTFLOWS_SERVING_MAX_BODY_BYTES", "lots"),
    ],
)
def test_a_bad_setting_stops_the_app_at_start_naming_the_variable(
    tmp_path, wine_model, variable, value
):
    proc = start(tmp_path, server_env(tmp_path, wine_model[0], **{variable: value}), free_port())
    try:
        output, _ = proc.communicate(timeout=120)
    finally:  # an app that starts anyway is stopped, not left behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert f"{variable}={value!r} is not a valid setting" in output.decode()


def test_bad_records_are_refused_naming_record_and_field_and_every_answer_counted(
    server, wine_model
):
    features = wine_model[1]
    good = records(features, 3)
    status, answer = server.post(json.dumps({"records": good}).encode())
    assert status == 200 and len(answer["classes"]) == 3
    bad = [*good[:2], {**good[2], "alcohol": "abc"}]
    status, answer = server.post(json.dumps({"records": bad}).encode())
    assert status == 422 and answer["problems"][0]["record"] == 2
    assert answer["problems"][0]["field"] == "alcohol"
    lacking = [good[0], {k: v for k, v in good[1].items() if k != "proline"}]
    status, answer = server.post(json.dumps({"records": lacking}).encode())
    assert status == 422 and "record 1: lacks features ['proline']" in answer["detail"]
    text = json.dumps({"records": good}).replace(str(good[0]["alcohol"]), "NaN", 1)
    assert server.post(text.encode())[0] == 422
    assert server.post(b"{not json")[0] == 422
    assert server.post(b'{"rows": []}')[0] == 422
    huge = json.dumps({"records": records(features, 178) + records(features, 80)}).encode()
    assert MAX_BODY < len(huge) < 2 * MAX_BODY and server.post(huge)[0] == 413
    _, metrics = server.get("/metrics")
    text = metrics.decode()
    assert 'ctflows_predict_requests_total{status="200"} 1.0' in text
    assert 'ctflows_predict_requests_total{status="422"} 5.0' in text
    assert 'ctflows_predict_requests_total{status="413"} 1.0' in text


def test_a_body_declared_past_the_maximum_is_413_before_it_is_sent(server):
    """The app answers from the headers: the rest of the body is never read into memory,
    and liveness answers meanwhile."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * MAX_BODY}\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"records": [')
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 413
        assert b"CTFLOWS_SERVING_MAX_BODY_BYTES" in answer.read()
    assert server.get("/health")[0] == 200


def test_every_prediction_has_its_own_id_and_the_callers_id_is_logged_beside_it(server, wine_model):
    features = wine_model[1]
    ids = []
    for _ in range(4):  # a batch job that sends the same X-Request-ID every time
        status, answer = server.post(
            json.dumps({"records": records(features, 2)}).encode(), {"X-Request-ID": "job7"}
        )
        assert status == 200 and answer["client_request_id"] == "job7"
        ids += answer["prediction_ids"]
    status, answer = server.post(
        json.dumps({"records": records(features, 1)}).encode(), {"X-Request-ID": "job7/0"}
    )
    ids += answer["prediction_ids"]
    huge_id = {**records(features, 1)[0], "customer_id": 2**64}
    status, answer = server.post(json.dumps({"records": [huge_id]}).encode())
    assert status == 200
    ids += answer["prediction_ids"]
    (huge_pid,) = answer["prediction_ids"]
    log = stop(server)
    assert len(set(ids)) == 10 and sorted(log["prediction_id"]) == sorted(ids)
    assert (log["client_request_id"] == "job7").sum() == 8
    assert (log["client_request_id"] == "job7/0").sum() == 1
    assert log["request_id"].nunique() == 6 and set(log["model_version"]) == {"3"}
    logged = log.loc[log["prediction_id"] == huge_pid, "features"].iloc[0]
    assert json.loads(logged)["customer_id"] == 2**64  # logged exactly, not lost

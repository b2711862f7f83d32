import socket
import time

import pytest

from tasks.config import TimeoutsParams
from tasks.services import (
    ServiceUnavailable,
    as_mlflow_outage,
    call_with_deadline,
    mlflow_call_bound,
    mlflow_http_env,
    probe_http,
    redact,
)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("postgresql://ml:hunter2@db:5432/mlflow", "hunter2", "postgresql://***@db:5432/mlflow"),
        ("https://alice:ghp_token123@mlflow.example/api", "ghp_token123", "mlflow.example/api"),
        ("MlflowException: API request to http://u:p4ss@h:5000/x failed", "p4ss", "h:5000/x"),
        ("https://s3.example/b/k?X-Amz-Signature=abcdef&x=1", "abcdef", "x=1"),
        ("https://mlflow.example/?token=s3cr3t", "s3cr3t", "mlflow.example"),
        ("posted to https://hooks.slack.com/services/T0/B0/XyZ", "XyZ", "hooks.slack.com"),
        ("mysql+pymysql://root:pw@localhost/db and https://user:tok@other", "tok", "other"),
        # a raw @ in the password: its tail is no less secret than its head
        ("https://bob:p@ss@w0rd@mlflow.example/api", "w0rd", "***@mlflow.example/api"),
        ("https://bob:p@ssw0rd@mlflow.example/", "ssw0rd", "***@mlflow.example/"),
        # Slack Workflow Builder webhooks
        (
            "to https://hooks.slack.com/triggers/T0/123/abcSECRET",
            "abcSECRET",
            "slack.com/triggers/",
        ),
        ("to https://hooks.slack.com/workflows/T0/A1/22/xyzSECRET", "xyzSECRET", "/workflows/"),
    ],
)
def test_credentials_in_urls_are_redacted(text, secret, kept):
    cleaned = redact(text)
    assert secret not in cleaned
    assert kept in cleaned and "***" in cleaned


def test_plain_addresses_are_left_alone():
    text = (
        "MLflow at http://127.0.0.1:5000 did not answer; see sqlite:////tmp/mlflow.db; "
        "https://host/x?q=a@b and mail ops@example.com"
    )
    assert redact(text) == text


def test_mlflow_retries_are_bounded_to_seconds_not_minutes():
    timeouts = TimeoutsParams()
    env = mlflow_http_env(timeouts)
    assert int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) < 7  # MLflow's own default: ~4 minutes
    assert int(env["MLFLOW_HTTP_REQUEST_TIMEOUT"]) < 120
    assert mlflow_call_bound(timeouts, env) < 60
    # a user's explicit environment wins and is what the bound reports
    assert mlflow_call_bound(timeouts, {"MLFLOW_HTTP_REQUEST_TIMEOUT": "100"}) > 300


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_probe_of_a_closed_port_names_service_and_address_without_credentials():
    port = closed_port()
    with pytest.raises(ServiceUnavailable) as err:
        probe_http("MLflow tracking server", f"http://ml:hunter2@127.0.0.1:{port}/health", 2)
    message = str(err.value)
    assert "MLflow tracking server" in message and f"127.0.0.1:{port}" in message
    assert "hunter2" not in message


def test_silent_server_fails_at_the_deadline():
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}"):
            probe_http("MLflow tracking server", f"http://127.0.0.1:{port}/health", 0.5)
        assert time.monotonic() - started < 5


def test_connection_failures_to_the_tracking_server_are_outages_others_are_not():
    from mlflow.exceptions import MlflowException

    uri = "http://u:pw@127.0.0.1:5999"
    refused = MlflowException(
        "API request to http://u:pw@127.0.0.1:5999/api/2.0/mlflow/runs/create failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded"
    )
    outage = as_mlflow_outage(refused, uri, 30)
    assert outage is not None and "MLflow" in str(outage) and "pw" not in str(outage)
    assert "127.0.0.1:5999" in str(outage)
    died = MlflowException(
        "API request to http://u:pw@127.0.0.1:5999/api/2.0/mlflow/runs/create failed with "
        "exception ('Connection broken: IncompleteRead(0 bytes read, 892 more expected)')"
    )
    assert as_mlflow_outage(died, uri, 30) is not None  # the server died mid-answer
    missing = MlflowException("Registered Model with name=churn not found")
    assert as_mlflow_outage(missing, uri, 30) is None
    assert as_mlflow_outage(refused, "sqlite:///x.db", 30) is None


def test_call_with_deadline_returns_raises_or_gives_up():
    assert call_with_deadline(lambda: 41 + 1, 5, "DVC remote", "/r") == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 5, "DVC remote", "/r")
    with pytest.raises(ServiceUnavailable, match="DVC remote at s3://\\*\\*\\*@bucket"):
        call_with_deadline(lambda: time.sleep(3), 0.2, "DVC remote", "s3://key:secret@bucket")


def test_log_records_lose_url_credentials_in_message_and_traceback():
    import io
    import logging

    from tasks.services import install_redaction

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("prefect.task_runs.redaction-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_redaction()
        try:
            raise ConnectionError("API request to https://bob:tok3n@mlflow.example/api failed")
        except ConnectionError:
            logger.exception("Task run failed: %s", "postgresql://ml:hunter2@db/mlflow")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "tok3n" not in text and "hunter2" not in text
    assert "mlflow.example/api" in text and "db/mlflow" in text and "Traceback" in text


def test_mlflow_bound_follows_params_but_an_explicit_environment_wins(monkeypatch):
    import os

    from tasks.services import bound_mlflow

    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    bound_mlflow(TimeoutsParams(mlflow=5, mlflow_retries=1))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    bound_mlflow(TimeoutsParams(mlflow=7, mlflow_retries=1))  # the next run's params
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")  # the user's own setting
    bound_mlflow(TimeoutsParams(mlflow=9, mlflow_retries=1))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"

import json

import pytest

from tasks.notify import (
    Message,
    RunOutcome,
    build_message,
    redact_outcome,
    send_message,
    ui_base_url,
)
from tests.helpers import SlackRecorder


@pytest.mark.parametrize(
    ("outcome", "must_say"),
    [
        (
            RunOutcome("promoted", "churn", "a" * 32, "3", "2", "run1", "roc_auc", 0.81, 0.8),
            ["v3", "previous champion 2"],
        ),
        (
            RunOutcome(
                "rejected", "churn", "b" * 32, "2", failed_gates=("improvement: gain +0.0000",)
            ),
            ["improvement"],
        ),
        (
            RunOutcome(
                "failed", "churn", "c" * 32, step="validate", error="DataValidationError: 3 failed"
            ),
            ["validate", "DataValidationError"],
        ),
        (RunOutcome("skipped", "churn", "d" * 32), ["already trained"]),
    ],
)
def test_messages_say_what_happened(outcome, must_say):
    message = build_message(outcome)
    rendered = message.text + json.dumps(message.blocks)
    for words in must_say:
        assert words in rendered
    assert outcome.data_md5 in rendered
    assert message.blocks[0]["type"] == "header"


def test_no_webhook_goes_to_the_outbox(tmp_path):
    delivery = send_message(Message("hello", []), None, tmp_path, retries=0)
    assert delivery.channel == "outbox"
    lines = (tmp_path / "outbox" / "slack.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["text"] == "hello"


@pytest.mark.parametrize("url", [None, "http://127.0.0.1:9/hook"])
def test_an_outbox_that_cannot_be_written_loses_the_message_loudly_never_raising(
    tmp_path, url, caplog
):
    (tmp_path / "outbox" / "slack.jsonl").mkdir(parents=True)  # cannot be appended to
    delivery = send_message(Message("v3 promoted", []), url, tmp_path, retries=0)
    assert not delivery.delivered and not delivery.kept
    assert "cannot be written" in delivery.detail and "v3 promoted" in delivery.detail
    assert any(r.levelname == "ERROR" and "LOST" in r.getMessage() for r in caplog.records)


def test_posts_through_slack_sdk_and_survives_an_outage(tmp_path):
    with SlackRecorder() as slack:
        ok = send_message(Message("up", [{"type": "divider"}]), slack.url, tmp_path, retries=0)
        slack.status = 503
        down = send_message(Message("down", []), slack.url, tmp_path, retries=1)
    assert ok.delivered and ok.channel == "slack"
    assert slack.messages == [{"text": "up", "blocks": [{"type": "divider"}]}]
    assert not down.delivered and "503" in down.detail
    kept = json.loads((tmp_path / "outbox" / "slack.jsonl").read_text().splitlines()[-1])
    assert kept["text"] == "down" and "503" in kept["reason"]


def test_unreachable_slack_is_kept_not_raised(tmp_path):
    delivery = send_message(Message("x", []), "http://127.0.0.1:9/hook", tmp_path, retries=0)
    assert not delivery.delivered and "unreachable" in delivery.detail


def test_silent_slack_is_given_up_at_its_deadline_and_kept(tmp_path):
    import socket
    import time

    with socket.socket() as sock:  # accepts, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        started = time.monotonic()
        delivery = send_message(Message("x", []), url, tmp_path, retries=0, timeout=1)
        assert time.monotonic() - started < 8  # not slack-sdk's default nor a hang
    assert delivery.channel == "outbox" and "deadline 1s" in delivery.detail
    assert (tmp_path / "outbox" / "slack.jsonl").exists()


def test_credentials_never_reach_the_message():
    outcome = RunOutcome(
        "failed",
        "churn",
        step="setup",
        error="ServiceUnavailable: MLflow at postgresql://ml:hunter2@db/mlflow is down; "
        "retry https://bob:tok3n@mlflow.example",
        deploy="https://u:pw9@registry.example/churn",
    )
    message = build_message(redact_outcome(outcome))
    rendered = message.text + json.dumps(message.blocks)
    assert "hunter2" not in rendered and "tok3n" not in rendered and "pw9" not in rendered
    assert "db/mlflow" in rendered and "mlflow.example" in rendered


@pytest.mark.parametrize(
    ("ui", "api", "expected"),
    [
        (None, None, None),  # ephemeral: no link rather than "None/flow-runs/..."
        (None, "http://127.0.0.1:4200/api", "http://127.0.0.1:4200"),
        ("https://prefect.example", "http://10.0.0.1:4200/api", "https://prefect.example"),
        ("None", None, None),
    ],
)
def test_flow_run_link_is_the_servers_ui_or_none(ui, api, expected):
    assert ui_base_url(ui, api) == expected

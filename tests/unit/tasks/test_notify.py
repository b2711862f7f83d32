import json

import pytest

from tasks.notify import Message, RunOutcome, build_message, send_message
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

"""Stage `notify`: tell the team on Slack (Block Kit), or in a JSONL outbox without a webhook."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import NotifyParams, Params
from tasks.outcome import Kind, RunOutcome

__all__ = ["Kind", "RunOutcome", "notify", "send_message"]  # RunOutcome lives in tasks.outcome

log = logging.getLogger(__name__)

EMOJI = {
    "promoted": ":rocket:",
    "rejected": ":no_entry:",
    "failed": ":rotating_light:",
    "skipped": ":repeat:",
    "dry-run": ":test_tube:",
    "drift": ":chart_with_upwards_trend:",
    "no-drift": ":white_check_mark:",
    "recovered": ":adhesive_bandage:",
    "rolled-back": ":rewind:",
    "frozen": ":ice_cube:",
}


@dataclass(frozen=True)
class Message:
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    channel: Literal["slack", "outbox"]
    delivered: bool
    detail: str
    kept: bool = True  # False: neither posted nor written to the outbox; the message is lost


def build_message(outcome: RunOutcome) -> Message:
    """Block Kit message for a run outcome; ``text`` is the notification fallback."""
    title = {
        "promoted": f"{outcome.model_name} v{outcome.version} promoted to champion",
        "rejected": f"{outcome.model_name} candidate rejected",
        "failed": f"{outcome.model_name} continuous training failed at {outcome.step}",
        "skipped": f"{outcome.model_name}: already trained on this data, params and code",
        "dry-run": f"{outcome.model_name} dry run: nothing promoted",
        "drift": f"{outcome.model_name}: data drift in {len(outcome.failed_gates)} features",
        "no-drift": f"{outcome.model_name}: no data drift",
        "recovered": f"{outcome.model_name}: recovered from an interrupted promotion",
        "rolled-back": f"{outcome.model_name} rolled back to v{outcome.version}",
        "frozen": f"{outcome.model_name} candidate passed the gates; promotions are frozen",
    }[outcome.kind]
    text = f"{EMOJI[outcome.kind]} {title}"
    facts = [f"*Data md5*\n`{outcome.data_md5 or '-'}`"]
    if outcome.candidate is not None:
        champ = "none" if outcome.champion is None else f"{outcome.champion:.4f}"
        facts.append(f"*{outcome.metric}*\ncandidate {outcome.candidate:.4f} / champion {champ}")
    if outcome.version:
        prev = outcome.previous_version or "none"
        facts.append(f"*Model version*\nv{outcome.version} (previous champion {prev})")
    if outcome.run_id:
        facts.append(f"*MLflow run*\n`{outcome.run_id}`")
    if outcome.deploy:
        facts.append(f"*Deploy*\n{outcome.deploy}")
    if outcome.actor:
        facts.append(f"*By*\n{outcome.actor}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in facts[:10]]},
    ]
    if outcome.failed_gates:
        gates = "\n".join(f"• {g}" for g in outcome.failed_gates)
        heading = "Drifted features" if outcome.kind == "drift" else "Failed gates"
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{heading}*\n{gates}"}}
        )
    if outcome.error:
        label = "Error" if outcome.kind == "failed" else "Details"
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*{label}*\n```{outcome.error[:2800]}```"},
            }
        )
    if outcome.report:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Gate report*\n{outcome.report}"},
            }
        )
    if outcome.flow_run:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": outcome.flow_run}]}
        )
    return Message(text=text, blocks=blocks)


def ui_base_url(ui_url: str | None, api_url: str | None) -> str | None:
    """The Prefect UI's address: ``PREFECT_UI_URL``, else the server's (its API URL without
    ``/api``), else None (an ephemeral in-process server has no UI to link to)."""
    for candidate in (ui_url, api_url.removesuffix("/") if api_url else None):
        if candidate and candidate.startswith(("http://", "https://")):
            return candidate.removesuffix("/api").rstrip("/")
    return None


def flow_run_link() -> str | None:
    """Link to the current flow run in the Prefect UI, or None outside a run or without a UI."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    run_id = flow_run.get_id()
    base = ui_base_url(PREFECT_UI_URL.value(), PREFECT_API_URL.value())
    if run_id is None or base is None:
        return None
    return f"{base}/runs/flow-run/{run_id}"


def redact_outcome(outcome: RunOutcome) -> RunOutcome:
    """The outcome with credentials removed from every text a message is built from."""
    from tasks.services import redact

    return replace(
        outcome,
        error=redact(outcome.error) if outcome.error else outcome.error,
        deploy=redact(outcome.deploy) if outcome.deploy else outcome.deploy,
        failed_gates=tuple(redact(g) for g in outcome.failed_gates),
        flow_run=redact(outcome.flow_run) if outcome.flow_run else outcome.flow_run,
    )


def webhook_url(notify: NotifyParams, environ: dict[str, str] | None = None) -> str | None:
    """The Slack webhook from the environment, else from the Prefect Secret block, else None."""
    env = os.environ if environ is None else environ
    if env.get(notify.webhook_env):
        return env[notify.webhook_env]
    if not notify.secret_block:
        return None
    from prefect.blocks.system import Secret

    try:
        secret: Any = Secret.load(notify.secret_block)
        return str(secret.get())
    except ValueError:  # no such block
        return None


def write_outbox(state_dir: Path, message: Message, reason: str) -> Path:
    path = state_dir / "outbox" / "slack.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"at": datetime.now(UTC).isoformat(), "reason": reason, **asdict(message)}
    with path.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return path


def keep_in_outbox(
    state_dir: Path, message: Message, reason: str, log_lost: bool = True
) -> Delivery:
    """The message in the outbox; if even that cannot be written (disk full, read-only), a
    Delivery saying it is lost, logged as an error (unless the caller logs it): never an
    exception."""
    try:
        path = write_outbox(state_dir, message, reason)
    except OSError as exc:
        detail = (
            f"{reason}; and the outbox under {state_dir} cannot be written "
            f"({type(exc).__name__}: {exc}): notification LOST: {message.text}"
        )
        if log_lost:
            log.error("%s", detail)
        return Delivery("outbox", False, detail, kept=False)
    return Delivery("outbox", True, f"{reason}; kept in {path}")


def send_message(
    message: Message,
    url: str | None,
    state_dir: Path,
    retries: int,
    timeout: float = 10.0,
    log_lost: bool = True,
) -> Delivery:
    """Post to Slack; on no webhook or a Slack outage, keep the message in the outbox instead.

    Never raises: a notification problem must not fail or undo what the run decided.
    """
    if not url:
        return keep_in_outbox(state_dir, message, "no Slack webhook configured", log_lost)
    from slack_sdk.http_retry.builtin_handlers import (
        ConnectionErrorRetryHandler,
        ServerErrorRetryHandler,
    )
    from slack_sdk.webhook import WebhookClient

    client = WebhookClient(
        url,
        timeout=max(1, round(timeout)),
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=retries),
            ServerErrorRetryHandler(max_retry_count=retries),
        ],
    )
    try:
        response = client.send(text=message.text, blocks=message.blocks)
        if response.status_code == 200:
            return Delivery("slack", True, "posted")
        problem = f"Slack answered {response.status_code}: {response.body[:200]}"
    except Exception as exc:  # slack-sdk surfaces urllib errors of many kinds
        from tasks.services import redact

        problem = redact(f"Slack unreachable (deadline {timeout:g}s): {type(exc).__name__}: {exc}")
    kept = keep_in_outbox(state_dir, message, problem, log_lost)
    return Delivery("outbox", False, kept.detail, kept.kept)


@task(name="notify", cache_policy=NONE)
def notify(outcome: RunOutcome, params: Params) -> Delivery:
    """Tell the team. Never raises: the decision is already recorded (tasks.ledger) and stands
    whether or not its notification could be delivered or kept."""
    from tasks.services import prefect_deadline, redact

    logger = get_run_logger()
    message = build_message(redact_outcome(outcome))
    try:
        with prefect_deadline(params.timeouts):
            url = webhook_url(params.notify)
    except Exception as exc:  # the Prefect API may be down; the message must still be kept
        logger.warning("could not read the Slack webhook secret: %s", redact(str(exc)))
        url = None
    delivery = send_message(
        message, url, params.state_dir, params.notify.retries, params.timeouts.slack, False
    )
    if not delivery.kept:  # logged here, once, where the flow run's log shows it
        logger.error("notification not delivered: %s", delivery.detail)
    else:
        log_fn = logger.info if delivery.delivered else logger.warning
        log_fn("notification (%s): %s — %s", delivery.channel, message.text, delivery.detail)
    return delivery

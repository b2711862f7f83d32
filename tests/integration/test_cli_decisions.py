"""The `ctflows` command keeps every decision and talks to the project's own Prefect server:
a notification that cannot be kept hides nothing, and exit codes say what happened."""

from __future__ import annotations

from tests.integration.test_cli import MODEL, as_json, ctflows, no_timing_gate


def test_an_outbox_that_cannot_be_written_fails_and_hides_no_decision(workspace, monkeypatch):
    ws = workspace
    no_timing_gate(ws)
    monkeypatch.delenv("CTFLOWS_SLACK_WEBHOOK_URL")  # the default: no webhook, the outbox
    (ws.params.state_dir / "outbox" / "slack.jsonl").mkdir(parents=True)  # cannot be written
    first = as_json(ctflows(ws, "run", MODEL, "--local", "--rev", ws.land_day(1, 3_000), "--json"))
    rev = ws.land_day(2, 24_000)
    second = ctflows(ws, "run", MODEL, "--local", "--rev", rev, "--json")
    assert as_json(second)["kind"] == "promoted" and as_json(second)["version"] == "2"
    assert "notification not delivered" in second.stderr and "LOST" in second.stderr

    back = ctflows(ws, "rollback", MODEL, "--reason", "disk full drill", "--json")
    assert as_json(back)["kind"] == "rolled-back" and as_json(back)["version"] == first["version"]
    assert "LOST" in back.stderr
    history = as_json(ctflows(ws, "history", MODEL, "--json"))
    assert [d["kind"] for d in history] == ["rolled-back", "promoted", "promoted"]
    assert history[0]["detail"] == "disk full drill"

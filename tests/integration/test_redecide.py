"""`ctflows run --redecide`: a rejection that came only from a gate measuring the machine is
decided again on request, and the history says who asked; any other decision is not."""

from __future__ import annotations

import yaml

from tasks.ledger import read_decisions
from tests.integration.test_cli import MODEL, as_json, ctflows


def gates(ws, **sections) -> None:
    raw = yaml.safe_load(ws.params_file.read_text())
    for name, values in sections.items():
        raw["gates"][name] = {**raw["gates"].get(name, {}), **values}
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_latency_rejection_is_decided_again_on_request_and_recorded(workspace):
    ws = workspace
    gates(ws, latency={"max_p95_ms": 0.001})  # no model meets it, and there is no champion
    rev = ws.land_day(1, 3_000)
    first = ws.run(rev)
    assert first.kind == "rejected" and any(g.startswith("latency") for g in first.failed_gates)
    assert ws.run(rev).kind == "skipped"  # decided: the same data is not gated again

    again = ws.run(rev, redecide="oncall@test")
    assert again.kind == "rejected" and again.run_id != first.run_id  # measured anew
    latest = read_decisions(ws.params, limit=5)[0]
    assert latest.kind == "rejected" and latest.run_id == again.run_id
    assert latest.actor == "oncall@test"
    assert f"re-decided at the request of oncall@test: run {first.run_id}" in latest.detail
    after = ws.run(rev)
    assert after.kind == "skipped" and after.run_id == again.run_id  # the new decision holds

    history = as_json(ctflows(ws, "history", MODEL, "--json"))
    assert any("re-decided" in d["detail"] for d in history)


def test_redecide_is_refused_for_a_decision_on_the_model(workspace):
    ws = workspace
    gates(ws, latency={"enabled": False}, minimums={"roc_auc": 0.999})
    rev = ws.land_day(1, 3_000)
    first = ws.run(rev)
    assert first.kind == "rejected"
    refused = ctflows(ws, "run", MODEL, "--rev", rev, "--redecide", "--local", expect=2)
    assert "minimums" in refused.stderr and "judge the model" in refused.stderr
    assert "--force" in refused.stderr
    latest = read_decisions(ws.params, limit=5)[0]
    assert latest.run_id == first.run_id  # nothing recorded for the refusal

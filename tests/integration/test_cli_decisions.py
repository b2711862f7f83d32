"""The `ctflows` command keeps every decision and talks to the project's own Prefect server:
a notification that cannot be kept hides nothing, and exit codes say what happened."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
import yaml

from ctflows.cli import exit_code
from ctflows.status import use_tracking
from deployments.server import server_file, serving_on
from tasks.journal import clear_journal, write_journal
from tasks.promote import SwitchRefused
from tests.helpers import ROOT, store
from tests.integration.test_cli import MODEL, as_json, ctflows, no_timing_gate
from tests.integration.test_continuous_training import champion_version


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


@pytest.mark.parametrize("silent", [False, True], ids=["closed-port", "never-answers"])
def test_mlflow_down_is_exit_3_for_every_command(workspace, monkeypatch, silent):
    ws = workspace
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["timeouts"].update(mlflow=1, mlflow_retries=0)
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if silent:
            sock.listen(16)  # accepts connections, never answers
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{sock.getsockname()[1]}")
        for command in (
            ["history", MODEL],
            ["promote", MODEL, "1", "--reason", "x"],
            ["freeze", MODEL, "--reason", "x"],
            ["run", MODEL, "--local"],
        ):
            down = ctflows(ws, *command, "--json", expect=None)
            assert down.returncode == 3, (command, down.stderr[-2000:])
            assert "MLflow" in as_json(down)["error"]


def test_bad_limits_and_switches_to_the_champion_are_refused_with_exit_2(workspace):
    ws = workspace
    no_timing_gate(ws)
    for limit in ("-1", "0"):
        assert "at least 1" in ctflows(ws, "history", MODEL, "--limit", limit, expect=2).stderr
    ws.run(ws.land_day(1, 3_000))
    ws.run(ws.land_day(2, 24_000))
    assert champion_version(ws) == "2"
    before = as_json(ctflows(ws, "history", MODEL, "--json"))
    for spelling in ("2", "02"):  # the registry reads "02" as version 2
        again = ctflows(ws, "promote", MODEL, spelling, "--reason", "again", expect=2)
        assert "already is the champion" in again.stderr
        same = ctflows(ws, "rollback", MODEL, "--to", spelling, "--reason", "x", expect=2)
        assert "already is the champion" in same.stderr
    assert as_json(ctflows(ws, "history", MODEL, "--json")) == before  # nothing was done

    # the flows refuse as well (a served `promote` run, a race with the command's own check)
    from flows.rollback import rollback

    with pytest.raises(SwitchRefused) as refused:
        rollback(version="2", params_file=str(ws.params_file))
    assert exit_code(refused.value) == 2 and champion_version(ws) == "2"


def test_the_command_prints_what_a_person_reads(workspace):
    ws = workspace
    no_timing_gate(ws)
    ctflows(ws, "run", MODEL, "--local", "--rev", ws.land_day(1, 3_000))
    run = ctflows(ws, "run", MODEL, "--local", "--rev", ws.land_day(2, 24_000))
    assert run.stdout.startswith("promoted")
    for noise in ("Traceback", "pickle", "telemetry", "%|"):
        assert noise not in run.stderr, noise
    finished = [line for line in run.stderr.splitlines() if "Finished in state" in line]
    assert len(finished) == 1  # the flow run's own, not one per task
    assert "train-model" in run.stderr  # each line names the task run it comes from
    back = ctflows(ws, "rollback", MODEL, "--reason", "alarms")
    forth = ctflows(ws, "promote", MODEL, "2", "--reason", "false alarm")
    assert "[None]" not in back.stdout + forth.stdout
    assert "alarms" in back.stdout and "false alarm" in forth.stdout

    failed = ctflows(ws, "run", MODEL, "--local", "--rev", "no-such-rev", expect=None)
    assert failed.returncode != 0 and failed.stderr.count("Traceback") <= 1
    assert failed.stderr.rstrip().splitlines()[-1].startswith("ctflows run: ")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    project = str(ws.params_file.parent)
    piped = subprocess.run(
        f"{sys.executable} -m ctflows history {MODEL} --json --project {project} | head -c 20",
        shell=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.stdout.startswith("[") and "BrokenPipe" not in piped.stderr, piped.stderr
    assert "Traceback" not in piped.stderr


def test_a_thread_of_a_served_process_talks_to_the_one_server(prefect_api):
    """The webhook receiver runs in a thread of `make serve`: it must not start a second,
    temporary Prefect server on the same database (threads read Prefect's global settings)."""
    from prefect.settings import get_current_settings

    seen: dict[str, object] = {}
    thread = threading.Thread(target=lambda: seen.update(url=get_current_settings().api.url))
    thread.start()
    thread.join()
    assert seen["url"] == prefect_api


def cli_without_prefect_env(ws, *args: str) -> subprocess.CompletedProcess[str]:
    """`ctflows` as run from a fresh shell: no PREFECT_API_URL exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), CTFLOWS_ACTOR="oncall@test")
    return subprocess.run(
        [sys.executable, "-m", "ctflows", *args, "--project", str(ws.params_file.parent)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_operator_commands_hold_the_slot_of_the_projects_own_server(workspace, prefect_api, capsys):
    ws = workspace
    no_timing_gate(ws)
    ws.run(ws.land_day(1, 3_000))
    ws.run(ws.land_day(2, 24_000))
    refused = cli_without_prefect_env(ws, "run", MODEL)  # needs the served deployments
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "make serve" in refused.stderr and "PREFECT_API_URL" in refused.stderr
    assert champion_version(ws) == "2"

    # no server known: the command starts the project's own (its database in the state dir,
    # as `make serve` does), records it while it runs, and never a throw-away one
    alone = cli_without_prefect_env(ws, "rollback", MODEL, "--reason", "no serve", "--json")
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert "starting its own for this command" in alone.stderr
    assert str(ws.params.state_dir / "prefect") in alone.stderr
    assert not as_json(alone)["flow_run"].startswith(prefect_api.removesuffix("/api"))
    assert champion_version(ws) == "1"
    assert not server_file(ws.params.state_dir).exists()  # gone with the command

    with serving_on(ws.params.state_dir, prefect_api):  # what `make serve` does
        assert f"export PREFECT_API_URL={prefect_api}" in capsys.readouterr().out
        again = cli_without_prefect_env(ws, "promote", MODEL, "2", "--reason", "ok", "--json")
        assert again.returncode == 0, again.stderr[-2000:]
        assert "starting its own" not in again.stderr
        assert as_json(again)["flow_run"].startswith(prefect_api.removesuffix("/api") + "/runs/")
        assert champion_version(ws) == "2"

        # a change in progress: its journal is open while the process that wrote it lives
        use_tracking(ws.params)
        write_journal(ws.params.registry.model_name, "2", "1", {})
        try:
            state = as_json(cli_without_prefect_env(ws, "status", MODEL, "--json"))
            assert state["journal"]["state"] == "in-progress", state["journal"]
            assert "died" not in state["journal"]["note"]
            text = cli_without_prefect_env(ws, "status", MODEL).stdout
            assert "journal     IN PROGRESS: move to v2 from v1" in text
        finally:
            clear_journal(ws.params.registry.model_name)
    assert not server_file(ws.params.state_dir).exists()  # gone with the server's process


def test_a_frozen_candidate_is_registered_and_promoted_by_hand_after_the_freeze(workspace):
    ws = workspace
    no_timing_gate(ws)
    ws.run(ws.land_day(1, 3_000))
    ctflows(ws, "freeze", MODEL, "--reason", "incident 42")
    rev = ws.land_day(2, 24_000)
    frozen = as_json(ctflows(ws, "run", MODEL, "--local", "--rev", rev, "--json"))
    assert frozen["kind"] == "frozen" and frozen["version"] == "2"
    assert frozen["previous_version"] == "1" and "ctflows promote" in frozen["error"]
    version = store(ws.params).get_model_version(ws.params.registry.model_name, "2")
    assert "incident 42" in version.tags["ct.frozen_candidate"]
    assert version.tags["ct.image_digest"].startswith("sha256:")  # built, ready to serve
    assert champion_version(ws) == "1"  # registered, never aliased while frozen
    history = as_json(ctflows(ws, "history", MODEL, "--json"))
    assert history[0]["kind"] == "frozen" and history[0]["version"] == "2"

    refused = ctflows(ws, "promote", MODEL, "2", "--reason", "too early", expect=2)
    assert "frozen" in refused.stderr and champion_version(ws) == "1"
    ctflows(ws, "unfreeze", MODEL)
    why = "frozen out during the incident, validated"
    promoted = as_json(ctflows(ws, "promote", MODEL, "2", "--reason", why, "--json"))
    assert promoted["kind"] == "promoted" and promoted["version"] == "2"
    assert champion_version(ws) == "2"
    assert as_json(ctflows(ws, "history", MODEL, "--json"))[0]["detail"] == why

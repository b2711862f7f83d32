"""What a successful run leaves behind: a flow-run link that opens, no ERROR in the server log."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path


def server_errors() -> list[str]:
    log = Path(os.environ["PREFECT_HOME"]) / "server.log"
    return [line for line in log.read_text().splitlines() if "| ERROR" in line]


def test_successful_runs_log_no_server_errors_and_link_the_ui(workspace, prefect_api):
    ws = workspace
    rev = ws.land_day(1, 2_000)
    before = server_errors()
    first = ws.run(rev)
    again = ws.run(rev)  # a second run of the same model: the training slot exists already
    assert (first.kind, again.kind) == ("promoted", "skipped")
    assert server_errors() == before  # e.g. no "UNIQUE constraint failed" on the slot

    ui = prefect_api.removesuffix("/api")
    for outcome in (first, again):
        assert outcome.flow_run and outcome.flow_run.startswith(f"{ui}/runs/flow-run/")
    with urllib.request.urlopen(first.flow_run, timeout=10) as page:  # the UI serves the route
        assert page.status == 200
    posted = [b for m in ws.slack.messages for b in m["blocks"] if b["type"] == "context"]
    assert posted and all("None/" not in str(b) for b in posted)

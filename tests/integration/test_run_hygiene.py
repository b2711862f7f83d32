"""What a successful run leaves behind: a flow-run link that opens, no ERROR in the server log."""

from __future__ import annotations

import os
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
        # the server's UI, on the route Prefect's own UI links use (prefect.utilities.urls)
        assert outcome.flow_run and outcome.flow_run.startswith(f"{ui}/runs/flow-run/")
    posted = [b for m in ws.slack.messages for b in m["blocks"] if b["type"] == "context"]
    assert posted and all("None/" not in str(b) for b in posted)

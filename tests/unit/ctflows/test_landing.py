"""`ctflows check`, `ctflows land` and `ctflows init --update` on a model made by init."""

import json

import pandas as pd
import pytest

from ctflows.catalog import find
from ctflows.cli import main
from ctflows.landing import check_data, land_data, widen_suite
from ctflows.onboard import init_model
from ctflows.operate import Refused
from tests.helpers import write_params
from tests.unit.ctflows.test_profile import wine_and_diabetes


@pytest.fixture
def project(tmp_path):
    write_params(tmp_path)
    wine_and_diabetes(tmp_path)
    init_model(
        tmp_path,
        "diabetes",
        tmp_path / "diabetes.csv",
        label="progression",
        repo=tmp_path / "data",
        create_repo=True,
    )
    return tmp_path


def test_check_validates_a_data_version_without_training(project, capsys):
    checked = check_data(find(project, "diabetes"), None)
    assert checked.passed and checked.rows == 442 and "expectations passed" in checked.summary
    assert main(["check", "diabetes", "--project", str(project)]) == 0
    assert "has every column params name" in capsys.readouterr().out
    assert not list((project / "state").glob("mlflow*"))  # nothing trained or tracked


def test_land_adds_the_next_version_and_refuses_a_batch_that_breaks_the_suite(project):
    model = find(project, "diabetes")
    first = check_data(model, None)
    batch = pd.read_csv(project / "diabetes.csv").sample(300, random_state=1)
    batch.to_csv(project / "day2.csv", index=False)
    placed = land_data(model, project / "day2.csv")
    assert placed.md5 != first.md5
    now = check_data(model, None)
    assert (now.rev, now.md5, now.rows) == (placed.rev, placed.md5, 300)
    bad = batch.assign(bmi=batch["bmi"] * 100)
    bad.to_csv(project / "bad.csv", index=False)
    with pytest.raises(Refused, match=r"breaks diabetes's suite.*init diabetes --update"):
        land_data(model, project / "bad.csv")
    assert check_data(model, None).rev == placed.rev  # nothing landed


def test_init_update_widens_the_suite_from_a_new_trusted_batch(project, capsys):
    model = find(project, "diabetes")
    drifted = pd.read_csv(project / "diabetes.csv")
    drifted["bmi"] = drifted["bmi"] + 15  # heavier patients: a legitimate change
    drifted.to_csv(project / "drifted.csv", index=False)
    suite_file = project / "models.d" / "diabetes" / "suite.json"
    before = suite_file.read_text()
    assert (
        main(
            [
                "init",
                "diabetes",
                "--update",
                "--dry-run",
                "--from",
                str(project / "drifted.csv"),
                "--project",
                str(project),
            ]
        )
        == 0
    )
    assert "would change" in capsys.readouterr().out and suite_file.read_text() == before
    widened = widen_suite(model, project / "drifted.csv")
    assert any("bmi" in c and "max_value" in c for c in widened.changes)
    bmi = next(
        e["kwargs"]
        for e in json.loads(suite_file.read_text())["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "bmi"
    )
    assert bmi["max_value"] >= drifted["bmi"].max()
    land_data(model, project / "drifted.csv")  # now admitted


def test_land_sends_the_signed_webhook_when_a_receiver_is_named(project, monkeypatch, capsys):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from deployments.webhook import parse_body, verify

    seen = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            verify("s3cret", headers, body, time.time(), 300)  # raises on a bad signature
            seen.append((self.path, parse_body(body)))
            self.send_response(202)
            self.end_headers()
            self.wfile.write(b'{"flow_run_id": "run-1"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CTFLOWS_WEBHOOK_SECRET", "s3cret")
    pd.read_csv(project / "diabetes.csv").head(300).to_csv(project / "day2.csv", index=False)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        code = main(
            [
                "land",
                "diabetes",
                str(project / "day2.csv"),
                "--webhook",
                url,
                "--no-wait",  # the receiver here is a stand-in: no flow run to follow
                "--project",
                str(project),
                "--json",
            ]
        )
    finally:
        server.shutdown()
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["webhook"]["flow_run_id"] == "run-1"
    ((path, landed),) = seen
    assert path == "/hooks/data-landed"
    assert (landed.path, landed.rev, landed.md5, landed.model) == (
        "data/diabetes.parquet",
        out["rev"],
        out["md5"],
        "diabetes",
    )

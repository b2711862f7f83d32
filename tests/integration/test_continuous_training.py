"""The continuous-training flow end to end against real DVC, GX, MLflow, Prefect and Slack."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from tasks.data import corrupt_batch, make_batch
from tasks.validate import DataValidationError
from tests.helpers import store


def champion_version(ws) -> str | None:
    client = store(ws.params)
    try:
        return str(client.get_model_version_by_alias("churn-classifier", "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def test_loop_promotes_improves_rejects_bad_data_and_skips_reruns(workspace):
    ws = workspace
    first = ws.run(ws.land_day(1, 3_000))
    assert first.kind == "promoted" and first.version == "1" and first.champion is None
    assert champion_version(ws) == "1"

    rev2 = ws.land_day(2, 24_000)
    second = ws.run(rev2)
    assert second.kind == "promoted", second.line()
    assert (second.version, second.previous_version) == ("2", "1")
    assert second.candidate > second.champion
    assert champion_version(ws) == "2"

    bad_rev = ws.land(corrupt_batch(make_batch(3, 5_000)), "day 3, corrupted")
    with pytest.raises(DataValidationError) as err:
        ws.run(bad_rev)
    assert "monthly_charges" in str(err.value)
    assert champion_version(ws) == "2"

    again = ws.run(rev2)
    assert again.kind == "skipped" and again.run_id == second.run_id

    texts = ws.slack.texts()
    assert [t.split()[0] for t in texts] == [":rocket:", ":rocket:", ":rotating_light:", ":repeat:"]
    failure = json.dumps(ws.slack.messages[2]["blocks"])
    assert "validate" in failure and "monthly_charges" in failure


def test_run_carries_lineage_signature_and_report(workspace):
    ws = workspace
    rev = ws.land_day(1, 3_000)
    outcome = ws.run(rev)
    client = store(ws.params)
    run = client.get_run(outcome.run_id)
    tags = run.data.tags
    assert tags["ct.data_md5"] == outcome.data_md5
    assert tags["ct.params_hash"] == ws.params.params_hash()
    assert len(tags["ct.git_commit"].split("-")[0]) == 40
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(outcome.candidate)
    assert run.data.params["hp.num_leaves"] == "15"
    version = client.get_model_version("churn-classifier", outcome.version)
    model = mlflow.pyfunc.load_model(f"models:/churn-classifier/{outcome.version}")
    inputs = {c.name for c in model.metadata.get_input_schema().inputs}
    assert inputs == set(ws.params.data.features)
    assert version.tags["ct.data_md5"] == outcome.data_md5
    report = client.download_artifacts(outcome.run_id, "gates/report.json")
    assert json.loads(Path(report).read_text())["decision"] == "promote"


def test_dry_run_changes_neither_registry_nor_cluster(workspace):
    ws = workspace
    outcome = ws.run(ws.land_day(1, 3_000), dry_run=True)
    assert outcome.kind == "dry-run"
    assert champion_version(ws) is None
    assert not (ws.params.state_dir / "deploy" / "dry-run.jsonl").exists()


def test_no_cluster_records_the_patch_and_never_claims_a_deploy(workspace):
    ws = workspace
    outcome = ws.run(ws.land_day(1, 3_000))
    assert "dry run, nothing deployed" in outcome.deploy and "@sha256:" in outcome.deploy
    record = json.loads((ws.params.state_dir / "deploy" / "dry-run.jsonl").read_text())
    containers = record["patch"]["spec"]["template"]["spec"]["containers"]
    assert (
        containers[0]["image"]
        == record["image"]
        == f"oci:{ws.params.state_dir / 'images'}@{record['image_digest']}"
    )
    assert record["image_kind"] == "modelcar" and record["pushed"] is False
    assert "built locally, not pushed" in outcome.deploy
    assert "nothing deployed" in json.dumps(ws.slack.messages[-1])


def test_slack_outage_never_undoes_a_promotion(workspace):
    ws = workspace
    ws.slack.status = 500
    outcome = ws.run(ws.land_day(1, 3_000))
    assert outcome.kind == "promoted"
    assert champion_version(ws) == "1"
    kept = (ws.params.state_dir / "outbox" / "slack.jsonl").read_text()
    assert "promoted" in kept and "500" in kept


def test_missing_dvc_object_fails_at_pull_and_notifies(workspace):
    ws = workspace
    rev = ws.land_day(1, 3_000)
    shutil.rmtree(ws.remote)
    shutil.rmtree(ws.data_repo / ".dvc" / "cache")
    with pytest.raises(Exception, match=r"(?i)dvc"):
        ws.run(rev)
    assert champion_version(ws) is None
    assert "failed at pull" in ws.slack.texts()[-1]


def test_unknown_revision_names_it(workspace):
    with pytest.raises(Exception, match="no-such-rev"):
        workspace.run("no-such-rev")
    assert "failed at pull" in workspace.slack.texts()[-1]


def test_unreachable_mlflow_fails_at_setup_and_notifies(workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(Exception, match=r"127\.0\.0\.1:9"):
        workspace.run(workspace.land_day(1, 3_000))
    assert "failed at setup" in workspace.slack.texts()[-1]


def test_dvc_repro_reproduces_the_flow_metrics(workspace, tmp_path):
    """dvc.yaml's stages call the same functions: same data and params give the same metrics."""
    from tests.helpers import ROOT

    ws = workspace
    project = tmp_path / "repro"
    for item in ("tasks", "expectations", "dvc.yaml"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / item)
    shutil.copy(ws.params_file, project / "params.yaml")
    env = {"PYTHONPATH": str(project), "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)
    repro = json.loads((project / "reports" / "metrics.json").read_text())

    prep = ws.params.prepare
    outcome = ws.run(ws.land(make_batch(prep.day, prep.rows, prep.seed, prep.drift), "prepare"))
    flow_metrics = store(ws.params).get_run(outcome.run_id).data.metrics
    for name, value in repro.items():
        assert flow_metrics[f"holdout_{name}"] == pytest.approx(value, abs=1e-9), name


def test_force_retrains_but_never_skips_validation(workspace):
    ws = workspace
    rev = ws.land_day(1, 3_000)
    first = ws.run(rev)
    forced = ws.run(rev, force=True)
    assert forced.kind == "promoted" and forced.version == "2"  # a tie, promoted by force
    bad = ws.land(corrupt_batch(make_batch(2, 3_000)), "corrupted")
    with pytest.raises(DataValidationError):
        ws.run(bad, force=True)
    assert champion_version(ws) == "2" and first.version == "1"


def test_rejection_names_failed_gates_and_where_the_report_is(workspace):
    ws = workspace
    rev = ws.land_day(1, 3_000)
    ws.run(rev)
    ws.params_file.write_text(ws.params_file.read_text().replace("seed: 42", "seed: 43"))
    rejected = ws.run(rev)  # same data, another seed: no significant gain
    assert rejected.kind == "rejected"
    message = json.dumps(ws.slack.messages[-1])
    assert "significance" in message and "gates/" in message and rejected.run_id in message
    client = store(ws.params)
    files = {f.path for f in client.list_artifacts(rejected.run_id, "gates")}
    assert {"gates/report.json", "gates/curves.png", "gates/bootstrap.png"} <= files

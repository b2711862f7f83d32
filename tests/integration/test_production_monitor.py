"""Production closes the loop: logged traffic drifts, the monitor's event starts a retraining."""

from __future__ import annotations

import pandas as pd
import yaml
from fastapi.testclient import TestClient

from deployments.serving.app import create_app
from deployments.serving.inference_log import LogConfig
from tasks.data import make_batch
from tests.helpers import wait_for
from tests.integration.test_triggers import flow_runs_of, served  # noqa: F401


def serve_traffic(params, version: str, batch: pd.DataFrame, monkeypatch) -> list[str]:
    """The champion behind the serving app in-process, answering ``batch`` in requests of 8."""
    monkeypatch.setenv("MODEL_NAME", params.registry.model_name)
    monkeypatch.setenv("MODEL_VERSION", version)
    config = LogConfig(url=str(params.state_dir / "inference-log"), flush_seconds=0.2)
    app = create_app(
        f"models:/{params.registry.model_name}/{version}",
        load_in_background=False,
        log_config=config,
    )
    records = batch[[*params.data.features, params.data.id_column]].to_dict(orient="records")
    ids = []
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        for i in range(0, len(records), 8):
            answer = client.post("/predict", json={"records": records[i : i + 8]})
            assert answer.status_code == 200, answer.text
            rid = answer.json()["request_id"]
            ids += [f"{rid}/{j}" for j in range(len(records[i : i + 8]))]
    return ids


def test_drifted_production_traffic_emits_the_event_that_starts_a_retraining(
    workspace,
    served,  # noqa: F811
    monkeypatch,
):
    ws = workspace
    first = ws.run(ws.land_day(1, 6_000))
    assert first.kind == "promoted"
    params = ws.params
    production = make_batch(2, 1_600, drift=1.5)
    ids = serve_traffic(params, first.version, production, monkeypatch)
    labels = pd.DataFrame(
        {"id": ids, "label": production[params.data.label], "time": pd.Timestamp.now(tz="UTC")}
    )
    labels.loc[len(labels)] = ["never-predicted", 1, pd.Timestamp.now(tz="UTC")]
    labels.to_parquet(ws.root / "labels.parquet")
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["monitor"]["labels"]["url"] = str(ws.root / "labels.parquet")
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    new_rev = ws.land_day(2, 6_000, drift=1.5)  # the newest data reflects the new traffic

    from flows.production_monitor import production_monitor

    report = production_monitor(params_file=str(ws.params_file))
    assert report.rows == report.champion_rows == 1_600
    assert report.retrain and "input drift" in report.reasons[0]
    assert {"contract", "monthly_charges"} <= {f.feature for f in report.feature_drift.drifted}
    assert report.live is not None and report.live.rows == 1_600
    assert report.holdout_metric is not None and report.labels_unmatched == 1
    assert any("never predicted" in n for n in report.notes)
    assert any("retraining requested" in t for t in ws.slack.texts())

    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[params.mlflow.experiment + "-production"], output_format="list"
    )
    assert runs and runs[0].data.tags["ct.retrain"] == "true"
    assert runs[0].info.artifact_uri.startswith(params.state_dir.resolve().as_uri())
    artifacts = {
        a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "monitor")
    }
    assert {"monitor/scores.png", "monitor/live_metric.png", "monitor/report.json"} <= artifacts

    def finished():
        done = [
            r
            for r in flow_runs_of("continuous-training/churn-classifier-on-new-data") or []
            if r.state and r.state.is_final()
        ]
        return done or None

    runs = wait_for(finished, 240, "the retraining the production monitor's event triggers")
    assert len(runs) == 1 and runs[0].parameters["rev"] == new_rev
    assert runs[0].state.is_completed(), runs[0].state

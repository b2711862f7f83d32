"""The served process's repair watch: a repair run only for a stale journal, never otherwise."""

from __future__ import annotations

from deployments.definitions import REPAIR_FLOW, deployment_specs
from deployments.repair_watch import RepairWatch, Watched
from tests.helpers import small_params

MODELS = [Watched("churn", "churn/params.yaml"), Watched("wine", "wine/params.yaml")]


def test_nothing_to_repair_starts_no_flow_run(caplog):
    started: list[tuple[str, str]] = []
    watch = RepairWatch(MODELS, 30, check=lambda f: None, start=lambda *a: started.append(a))
    for _ in range(100):  # 50 minutes of looks at two models
        assert watch.look() == []
    assert started == []


def test_a_stale_journal_starts_one_repair_of_its_model_only():
    stale = {"wine/params.yaml": "the run that wrote it ended CRASHED"}
    started: list[tuple[str, str]] = []

    def start(deployment: str, params_file: str) -> str:
        started.append((deployment, params_file))
        return "run-1"

    watch = RepairWatch(MODELS, 30, check=stale.get, start=start)
    assert watch.look() == ["run-1"]
    assert started == [("repair/wine", "wine/params.yaml")]


def test_a_failed_look_is_logged_and_the_other_models_are_still_watched(caplog):
    caplog.set_level("INFO", "deployments.repair_watch")

    def check(params_file: str) -> str | None:
        if params_file.startswith("churn"):
            raise ConnectionError("MLflow is down")
        return "no run holds the training slot"

    watch = RepairWatch(MODELS, 30, check=check, start=lambda d, f: None)  # one under way
    assert watch.look() == []
    text = caplog.text
    assert "could not look at churn: ConnectionError: MLflow is down" in text
    assert "wine has a stale journal (no run holds the training slot)" in text


def test_the_repair_deployment_has_no_schedule(tmp_path):
    """It ran every 30 s for every model: 98 completed and 297 scheduled runs in 17 minutes."""
    specs = deployment_specs(small_params(tmp_path), "params.yaml", "churn")
    (repair,) = [s for s in specs if s.flow_name == REPAIR_FLOW]
    assert repair.name == "churn" and repair.cron is None and repair.interval_seconds is None
    assert repair.triggers == ()  # served: the watch starts it; a work pool: pool_triggers
    assert repair.pool_triggers[0]["expect"] == ["prefect.flow-run.Crashed"]

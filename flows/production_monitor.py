"""Flow `production-monitor`: the inference log against what the champion was promoted on."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger

from tasks.config import load_params
from tasks.monitor import MonitorReport, analyse_window
from tasks.monitor_io import (
    load_labelled,
    load_reference,
    load_window,
    missing_versions,
    publish_report,
    request_retraining,
)
from tasks.notify import flow_run_link
from tasks.train import prepare_tracking


@flow(name="production-monitor")
def production_monitor(
    params_file: str = "params.yaml", end: datetime | None = None
) -> MonitorReport:
    """Watch production over the last ``monitor.window_hours`` of the inference log (to ``end``).

    Input drift against the champion's training rows, score drift against its holdout scores,
    and its live metric on labelled predictions against its holdout metric; past the
    thresholds in ``params.monitor`` (and ``params.drift`` for features), emits the event that
    starts `continuous-training/<model>-on-new-data`, with the reasons. The report goes to a Prefect
    artifact, an MLflow run (with plots) and Slack.
    """
    logger = get_run_logger()
    params = load_params(params_file)
    prepare_tracking(params)
    window = load_window(params, end or datetime.now(UTC))
    reference = load_reference(params)
    labelled = load_labelled(params, window, reference)
    report = analyse_window(
        window,
        reference,
        labelled,
        params.data,
        params.drift,
        params.monitor,
        params.gates.primary_metric,
        params.registry.model_name,
        missing_versions(params, window),
    )
    for note in report.notes:
        logger.warning(note)
    if report.retrain:
        request_retraining(report, params)
    publish_report(report, reference, window, params, flow_run_link())
    logger.info(report.summary())
    return report


if __name__ == "__main__":
    production_monitor()

"""Flow `drift-monitor`: the newest data against the champion's training data, per feature."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from tasks.champion import champion_data_version
from tasks.config import load_params
from tasks.data import pull_data, read_version, resolve_data, split_holdout
from tasks.drift import DriftReport, measure_drift, should_retrain
from tasks.notify import RunOutcome, flow_run_link, notify
from tasks.train import prepare_tracking


@flow(name="drift-monitor")
def drift_monitor(
    rev: str | None = None,
    path: str | None = None,
    repo: str | None = None,
    params_file: str = "params.yaml",
) -> DriftReport | None:
    """Compare data at ``rev`` with the champion's training rows; drift starts a retraining.

    Beyond the thresholds in ``params.drift``, emits the drift event that the
    `continuous-training/<model>-on-new-data` deployment is triggered by, with this data's path,
    revision and md5; the per-feature report goes to Slack and to a Prefect table artifact.
    """
    logger = get_run_logger()
    params = load_params(params_file)
    prepare_tracking(params)
    reference = champion_data_version(params)
    if reference is None:
        logger.info("no @%s yet: nothing to compare the data with", params.registry.alias)
        return None
    current = resolve_data(
        repo or params.data.repo, path or params.data.path, rev or params.data.rev
    )
    # the champion's training window, rebuilt from the revision it was trained at
    reference = resolve_data(
        reference.repo, reference.path, reference.rev, reference.md5, params.data
    )
    current, reference = pull_data(current, params), pull_data(reference, params)
    training_rows, _ = split_holdout(read_version(reference), params.data)
    report = measure_drift(training_rows, read_version(current), params.data, params.drift)
    retrain = should_retrain(report, params.drift)
    if retrain:
        emit_event(
            event=params.drift.event,
            resource={"prefect.resource.id": f"ctflows.data.{current.path}"},
            payload={
                "path": current.path,
                "rev": current.rev,
                "md5": current.md5,
                "repo": current.repo,
                "drifted": [f.feature for f in report.drifted],
            },
        )
        logger.warning(
            "drift: emitted %s for %s md5=%s", params.drift.event, current.path, current.md5
        )
    notify(
        RunOutcome(
            "drift" if report.drifted else "no-drift",
            params.registry.model_name,
            current.md5,
            failed_gates=tuple(f"{f.feature}: {f.reason()}" for f in report.drifted),
            deploy="retraining requested" if retrain else None,
            flow_run=flow_run_link(),
        ),
        params,
    )
    return report


if __name__ == "__main__":
    drift_monitor()

import logging
import sys

import pytest

from ctflows.output import RunLogFilter, RunLogFormatter
from tasks.errors import CtflowsError


def record(name: str, message: str, exc: BaseException | None = None, **extra) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, message, (), exc_info)
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize(
    ("name", "message", "shown"),
    [
        ("prefect.task_runs", "Finished in state Completed()", False),
        ("prefect.task_runs", "Finished in state Failed('boom')", True),
        ("prefect.flow_runs", "Finished in state Completed()", True),
        ("mlflow.sklearn", "Saving scikit-learn models in the pickle or cloudpickle format", False),
        ("mlflow.telemetry.client", "Failed to upload telemetry", False),
        ("prefect.task_runs", "trained on 2364 rows", True),
    ],
)
def test_only_lines_a_person_needs_are_shown(name, message, shown):
    assert RunLogFilter().filter(record(name, message)) is shown


def test_a_line_names_its_task_run():
    line = RunLogFormatter().format(record("prefect.task_runs", "pulled", task_run_name="pull-0"))
    assert line.endswith("INFO pull-0: pulled")


def test_a_traceback_shows_once_and_never_for_an_error_raised_on_purpose():
    fmt = RunLogFormatter()
    on_purpose = record("prefect.task_runs", "Task run failed", CtflowsError("no such rev"))
    assert "Traceback" not in fmt.format(on_purpose)
    assert on_purpose.exc_info is not None  # other handlers (the Prefect API) still get it
    unexpected = record("prefect.task_runs", "Task run failed", KeyError("x"))
    assert "Traceback" in fmt.format(unexpected)
    again = record("prefect.flow_runs", "Encountered exception during execution", KeyError("x"))
    assert "Traceback" not in fmt.format(again)

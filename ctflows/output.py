"""What `ctflows` prints on stderr while it works: a line a person reads, once.

A flow run in this process (`run --local`, `rollback`, `promote`) logs through Prefect; the
command shows each line with the task or flow run it belongs to, leaves out Prefect's
"Finished in state Completed()" after every task, shows a traceback at most once (none for an
error ctflows raised on purpose: its message says what happened and what to do, and the command
prints it last), and silences libraries' chatter (MLflow's table creation, progress bars,
the warning about the cloudpickle format ctflows chose, telemetry).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from tasks.errors import CtflowsError

QUIET_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..."
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts: 20%|██"
}
# the engine's own report of an exception the task that raised it has already logged
_ALREADY_SHOWN = ("Encountered exception during execution",)


class RunLogFilter(logging.Filter):
    """Drops the lines nobody needs to read."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("mlflow.telemetry"):
            return False  # usage reporting that cannot reach its server: not the user's problem
        message = record.getMessage()
        if record.name == "prefect.task_runs" and message.startswith("Finished in state Completed"):
            return False
        # ctflows saves models with cloudpickle on purpose (tasks/train.py)
        return not (record.name == "mlflow.sklearn" and "pickle" in message)


class RunLogFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL where: message``, where is the task or flow run, else the logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(where)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)  # other handlers see the record as it was
        shown.where = (
            getattr(record, "task_run_name", None)
            or getattr(record, "flow_run_name", None)
            or record.name
        )
        if shown.exc_info and hide_traceback(record):
            shown.exc_info, shown.exc_text = None, None
        return super().format(shown)


def hide_traceback(record: logging.LogRecord) -> bool:
    """An error raised on purpose, or one already shown by the task that raised it."""
    error = record.exc_info[1] if record.exc_info else None
    return isinstance(error, CtflowsError) or record.getMessage().startswith(_ALREADY_SHOWN)


@contextlib.contextmanager
def configured(level: int = logging.WARNING) -> Iterator[None]:
    """The command's logging while it runs: one stderr handler on the root logger, filtered
    and formatted, MLflow quietened; all undone when it ends (``main`` may be called from a
    program, which keeps its own logging and environment)."""
    saved_env = {key: os.environ.get(key) for key in QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunLogFilter())
    handler.setFormatter(RunLogFormatter())
    sklearn_filter = RunLogFilter()
    telemetry = logging.getLogger("mlflow.telemetry")
    saved_level, saved_telemetry = root.level, telemetry.level
    root.addHandler(handler)
    root.setLevel(level)
    # MLflow logs through its own handler: its loggers are quietened where they log
    logging.getLogger("mlflow.sklearn").addFilter(sklearn_filter)
    telemetry.setLevel(logging.CRITICAL)  # and its modules below
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        logging.getLogger("mlflow.sklearn").removeFilter(sklearn_filter)
        telemetry.setLevel(saved_telemetry)
        for key, saved in saved_env.items():
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved

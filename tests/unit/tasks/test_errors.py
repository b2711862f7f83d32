"""Every error ctflows raises on purpose carries its kind; the CLI maps kinds to exit codes."""

import pytest

from ctflows.catalog import UnknownModel
from ctflows.cli import EXIT_FAILED, EXIT_REFUSED, EXIT_UNAVAILABLE, exit_code
from tasks.cluster import DeployError, RolloutFailed
from tasks.config import ConfigError
from tasks.errors import CtflowsError, ErrorKind, kind_of
from tasks.services import ServiceUnavailable
from tasks.validate import DataValidationError


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (ConfigError("train.seed: expected an int"), ErrorKind.BAD_INPUT, EXIT_REFUSED),
        (UnknownModel("wine", ["churn-classifier"]), ErrorKind.BAD_INPUT, EXIT_REFUSED),
        (
            ServiceUnavailable("MLflow", "http://x", "refused"),
            ErrorKind.UNAVAILABLE,
            EXIT_UNAVAILABLE,
        ),
        (DeployError("API error"), ErrorKind.UNAVAILABLE, EXIT_UNAVAILABLE),
        (RolloutFailed("churn", "deadline"), ErrorKind.FAILED, EXIT_FAILED),
        (ConnectionRefusedError("closed"), ErrorKind.UNAVAILABLE, EXIT_UNAVAILABLE),
        (KeyError("x"), ErrorKind.FAILED, EXIT_FAILED),
    ],
)
def test_errors_map_to_exit_codes_by_kind(exc: BaseException, kind: ErrorKind, code: int) -> None:
    assert kind_of(exc) is kind
    assert exit_code(exc) == code


def test_every_named_error_derives_from_the_one_base() -> None:
    assert issubclass(DataValidationError, CtflowsError)
    assert issubclass(ConfigError, ValueError)  # still catchable as before

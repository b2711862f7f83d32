"""Gate infra_validation's pure parts: what it refuses before running, how it compares."""

from __future__ import annotations

import platform

import pytest
from pydantic import ValidationError

from tasks.config.gates import InfraValidationParams
from tasks.gates.infra_validation import (
    ARCH,
    check_runnable,
    compare_scores,
    exited,
    load_failure,
    own_lines,
)
from tasks.oci_layout import ImageError

HOST = f"linux/{ARCH.get(platform.machine(), platform.machine())}"


def config(os_: str = "linux", arch: str | None = None, cmd: list[str] | None = None) -> dict:
    arch = arch or HOST.split("/")[1]
    return {"Os": os_, "Architecture": arch, "Config": {"Cmd": cmd}}


def test_an_image_for_another_platform_or_without_a_command_is_refused_before_it_runs():
    check_runnable(config(cmd=["uvicorn"]), "r/i@sha256:1")
    other = "s390x" if HOST != "linux/s390x" else "amd64"
    with pytest.raises(ImageError, match=f"is for linux/{other}; this machine runs {HOST}"):
        check_runnable(config(arch=other, cmd=["uvicorn"]), "r/i@sha256:1")
    with pytest.raises(ImageError, match="has no command"):
        check_runnable(config(cmd=None), "r/i@sha256:1")


def test_scores_must_be_the_candidates_exactly_or_within_the_tolerance():
    assert compare_scores([0.1, 0.2], [0.1, 0.2], 0.0) is None
    assert "row 1 served 0.2000001" in str(compare_scores([0.1, 0.2000001], [0.1, 0.2], 0.0))
    assert compare_scores([0.1, 0.2000001], [0.1, 0.2], 1e-6) is None
    assert compare_scores([0.1], [0.1, 0.2], 0.0) == "answered 1 scores for 2 rows"


def test_a_kill_under_the_memory_limit_is_named_as_such():
    assert "killed (exit 137, SIGKILL), most likely over its memory limit of 64 MiB" in exited(
        {"ExitCode": 137}, 1 << 26
    )
    assert "killed for memory (exit 1): over its memory limit" in exited(
        {"ExitCode": 1, "OOMKilled": True}, 1 << 26
    )
    assert exited({"ExitCode": 3}, 1 << 26) == "the container exited with code 3"


def test_params_name_the_runtime_and_refuse_unknown_keys():
    assert InfraValidationParams().runtime is None
    assert InfraValidationParams(runtime="podman").ready_seconds == 90
    with pytest.raises(ValidationError, match="runtime"):
        InfraValidationParams(runtime="docker")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="probe"):
        InfraValidationParams(probe=3)  # type: ignore[call-arg]


def test_the_log_tail_keeps_what_the_app_said_not_the_gates_own_polling():
    logs = "model /models failed to load: X\n" + '1.2.3.4 - "GET /ready HTTP/1.1" 503\n' * 50
    assert own_lines(logs) == "model /models failed to load: X"


def test_a_model_that_failed_to_load_is_not_waited_for():
    failed = '{"status": "not ready", "reason": "ModuleNotFoundError: No module named \'tasks\'"}'
    assert load_failure(failed) == "ModuleNotFoundError: No module named 'tasks'"
    assert load_failure('{"status": "not ready", "reason": "loading"}') is None
    assert load_failure("<html>bad gateway</html>") is None

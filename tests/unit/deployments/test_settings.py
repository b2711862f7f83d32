"""The serving settings are checked when the app starts, each error naming its variable."""

from __future__ import annotations

import pytest

from deployments.serving.settings import LogConfig, RequestLimits, SettingError


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "0"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "-1"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "nan"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "inf"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS", "soon"),
        ("CTFLOWS_INFERENCE_LOG_BUFFER_ROWS", "0"),
        ("CTFLOWS_INFERENCE_LOG_BUFFER_ROWS", "-5"),
        ("CTFLOWS_INFERENCE_LOG_BUFFER_ROWS", "lots"),
        ("CTFLOWS_INFERENCE_LOG_BUFFER_ROWS", "1.5"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_ROWS", "0"),
        ("CTFLOWS_INFERENCE_LOG_FLUSH_ROWS", "20000"),  # past the buffer (10000)
        ("CTFLOWS_INFERENCE_LOG", "maybe"),
        ("CTFLOWS_INFERENCE_LOG_URL", " "),
        ("DECISION_THRESHOLD", "nan"),
        ("DECISION_THRESHOLD", "half"),
    ],
)
def test_a_bad_log_setting_is_refused_naming_the_variable(variable, value):
    with pytest.raises(SettingError, match=variable) as caught:
        LogConfig.from_env({variable: value})
    assert caught.value.variable == variable and "expected" in str(caught.value)


def test_log_settings_read_from_the_environment():
    assert LogConfig.from_env({}) == LogConfig()
    assert LogConfig.from_env({"CTFLOWS_INFERENCE_LOG": "off"}).enabled is False
    got = LogConfig.from_env(
        {
            "CTFLOWS_INFERENCE_LOG_BUFFER_ROWS": "500",
            "CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS": "0.5",
            "CTFLOWS_INFERENCE_LOG_URL": "s3://b/p",
        }
    )
    assert (got.buffer_rows, got.flush_rows, got.flush_seconds, got.url) == (
        500,
        500,
        0.5,
        "s3://b/p",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CTFLOWS_SERVING_MAX_BODY_BYTES", "0"),
        ("CTFLOWS_SERVING_MAX_BODY_BYTES", "16MB"),
        ("CTFLOWS_SERVING_MAX_INFLIGHT_BYTES", "100"),  # below the max body
    ],
)
def test_a_bad_request_limit_is_refused_naming_the_variable(variable, value):
    with pytest.raises(SettingError, match=variable):
        RequestLimits.from_env({variable: value})


def test_request_limits_default_to_16_mib_and_four_bodies_at_once():
    assert RequestLimits.from_env({}) == RequestLimits(16 << 20, 64 << 20)
    assert (
        RequestLimits.from_env({"CTFLOWS_SERVING_MAX_BODY_BYTES": "4096"}).max_inflight_bytes
        == 16384
    )

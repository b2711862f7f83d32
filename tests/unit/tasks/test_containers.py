"""The container engine's wrapper and the serving base's build inputs: pure parts, no engine."""

from __future__ import annotations

import pytest

from tasks.containers import ContainerError, Podman, RuntimeMissing, failed_step
from tasks.errors import ErrorKind
from tasks.serving_base import build_volumes, source_key

BUILD_OUTPUT = """STEP 1/4: FROM localhost/ctflows-bootstrap:bookworm
STEP 2/4: ENV PATH=/opt/venv/bin:$PATH
--> 1a2b
STEP 3/4: RUN /opt/venv/bin/pip install -r /tmp/requirements.txt
ERROR: Could not find a version that satisfies the requirement lightgbm==99
"""


def test_a_failed_build_names_the_step_it_failed_at():
    assert failed_step(BUILD_OUTPUT) == (
        "STEP 3/4: RUN /opt/venv/bin/pip install -r /tmp/requirements.txt"
    )
    assert failed_step("Error: no such file") == "before its first step"


def test_an_absent_runtime_is_a_bad_input_error_naming_the_package():
    with pytest.raises(RuntimeMissing, match="no-such-runc is not installed") as err:
        Podman(runtime="no-such-runc")
    assert err.value.kind is ErrorKind.BAD_INPUT
    assert isinstance(err.value, ContainerError)


def test_the_cache_key_changes_with_what_the_dockerfile_copies(tmp_path):
    serving = tmp_path / "deployments" / "serving"
    serving.mkdir(parents=True)
    (tmp_path / "deployments" / "__init__.py").write_text("")
    (serving / "Dockerfile").write_text(
        "FROM python:3.11-slim\nCOPY deployments/__init__.py /app/deployments/\n"
        "COPY --chown=1 deployments/serving/ /app/deployments/serving/\n"
    )
    (serving / "requirements.txt").write_text("fastapi==1\n")
    (serving / "app.py").write_text("x = 1\n")
    first = source_key(tmp_path)
    assert source_key(tmp_path) == first
    assert source_key(tmp_path, "localhost/other-from") != first
    (serving / "app.py").write_text("x = 2\n")
    assert source_key(tmp_path) != first
    (tmp_path / "README.md").write_text("not copied")
    second = source_key(tmp_path)
    (tmp_path / "README.md").write_text("not copied, changed")
    assert source_key(tmp_path) == second


def test_pip_in_the_build_gets_the_hosts_ca_and_index(tmp_path):
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"PIP_CERT": str(ca), "PIP_INDEX_URL": "https://pypi.example.com/simple", "HOME": "/x"}
    volumes = build_volumes(tmp_path / "pip", env)
    assert volumes == [f"{tmp_path / 'pip'}:/etc/xdg/pip:ro"]
    conf = (tmp_path / "pip" / "pip.conf").read_text()
    assert "cert = /etc/xdg/pip/ca.crt" in conf
    assert "index-url = https://pypi.example.com/simple" in conf
    assert (tmp_path / "pip" / "ca.crt").read_text() == ca.read_text()

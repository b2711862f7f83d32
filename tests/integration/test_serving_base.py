"""Building images from Dockerfiles with podman: a failing build names its step."""

from __future__ import annotations

import pytest

from tasks.containers import ContainerError, Podman
from tasks.serving_base import bootstrap_image, build_base, source_key


def test_a_build_that_fails_names_the_step_and_what_it_printed(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11-slim\nRUN echo first step ok\n"
        "RUN echo 'E: Unable to locate package libnothing1' && exit 100\n"
    )
    podman = Podman()
    bootstrap = bootstrap_image(podman)  # made for the serving base already (cached)
    with pytest.raises(ContainerError, match=r"failed at STEP 3/3: RUN echo 'E: Unable") as err:
        build_base(
            podman,
            bootstrap="bookworm",
            root=tmp_path,
            dockerfile=dockerfile.relative_to(tmp_path),
            name="localhost/ctflows-test-failing",
        )
    assert "exit 100" in str(err.value) and "Unable to locate package libnothing1" in str(err.value)
    key = source_key(tmp_path, bootstrap, dockerfile.relative_to(tmp_path))
    assert not podman.exists(f"localhost/ctflows-test-failing:{key}")  # nothing half-built

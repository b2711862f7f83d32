"""Integration fixtures: one real Prefect server per session, real DVC, MLflow, GX, Slack client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployments.server import prefect_server
from tasks.config import Params, load_params
from tasks.data import init_data_repo, make_batch, publish_batch
from tests.helpers import SlackRecorder, write_params


@pytest.fixture(scope="session", autouse=True)
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` on a free loopback port, shared by the whole session."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@dataclass
class Workspace:
    root: Path
    params_file: Path
    data_repo: Path
    remote: Path
    slack: SlackRecorder

    @property
    def params(self) -> Params:
        return load_params(self.params_file)

    def land(self, df, message: str) -> str:
        """Publish a batch as a new data version; return the git revision."""
        return publish_batch(self.data_repo, df, "data/batch.parquet", message)

    def land_day(self, day: int, rows: int, **kwargs) -> str:
        return self.land(make_batch(day, rows, **kwargs), f"day {day}")

    def run(self, rev: str, **kwargs):
        from flows.continuous_training import continuous_training

        return continuous_training(
            rev=rev, repo=str(self.data_repo), params_file=str(self.params_file), **kwargs
        )


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A data repository with a local DVC remote, an MLflow SQLite store, Slack on loopback."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with SlackRecorder() as slack:
        monkeypatch.setenv("CTFLOWS_SLACK_WEBHOOK_URL", slack.url)
        data_repo, remote = tmp_path / "data-repo", tmp_path / "dvc-remote"
        params_file = write_params(tmp_path / "project", data={"repo": str(data_repo)})
        init_data_repo(data_repo, remote)
        yield Workspace(tmp_path, params_file, data_repo, remote, slack)


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real docker-registry on loopback for the whole session; yields ``127.0.0.1:<port>``."""
    from tests.oci_registry import docker_registry

    with docker_registry(tmp_path_factory.mktemp("oci-registry")) as host:
        yield host


@pytest.fixture(scope="session")
def serving_base(oci_registry: str) -> str:
    """The serving base built from deployments/serving/Dockerfile (as `make serving-base`
    does, on an mmdebstrap bookworm; minutes the first time, cached after), pushed once:
    ``127.0.0.1:<port>/ctflows-serving@sha256:...``."""
    from tests.oci_registry import push_serving_base

    return push_serving_base(oci_registry)

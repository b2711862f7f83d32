"""The recovery journal, on a real MLflow SQLite store in tmp."""

import socket

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tasks.cluster import PodTemplate
from tasks.journal import (
    JOURNAL_TAG,
    JournalError,
    RecoveryIncomplete,
    read_journal,
    recover,
    write_journal,
)
from tests.helpers import small_params

NAME = "churn-classifier"
RUNNING = {"churn-model": PodTemplate("reg/m:v1", {"ctflows.io/model-version": "1"})}


@pytest.fixture
def store(tmp_path):
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    client.create_registered_model(NAME)
    yield client
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def test_no_model_and_no_tag_both_mean_no_journal(store):
    assert read_journal("never-registered") is None
    assert read_journal(NAME) is None


def test_a_registry_that_fails_is_not_read_as_no_journal(store, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_registry_uri(f"http://127.0.0.1:{port}")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    with pytest.raises(JournalError, match="could not read the journal"):
        read_journal(NAME)


def test_an_unreadable_journal_is_an_error_not_none(store):
    store.set_registered_model_tag(NAME, JOURNAL_TAG, "{truncated")
    with pytest.raises(JournalError, match="not JSON"):
        read_journal(NAME)


def test_an_open_journal_is_never_overwritten(store):
    write_journal(NAME, "2", "1", RUNNING)
    with pytest.raises(JournalError, match="open journal"):
        write_journal(NAME, "3", "2", {})
    assert read_journal(NAME)["version"] == "2"


def test_recovery_in_dry_run_mode_keeps_journal_and_alias(store, tmp_path):
    """A worker that cannot reach the cluster must not declare the repair done."""
    params = small_params(tmp_path / "p")  # deploy.target: dry-run
    store.create_model_version(NAME, "file:///tmp/m1")
    store.create_model_version(NAME, "file:///tmp/m2")
    store.set_registered_model_alias(NAME, "champion", "2")
    write_journal(NAME, "2", "1", RUNNING)
    with pytest.raises(RecoveryIncomplete, match="dry-run"):
        recover(params)
    assert read_journal(NAME)["version"] == "2"
    assert str(store.get_model_version_by_alias(NAME, "champion").version) == "2"


def test_recovery_against_a_failing_cluster_api_keeps_journal_and_alias(store, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: named, context: {{cluster: c, user: u}}}}]
current-context: named
"""
    )
    params = small_params(
        tmp_path / "p",
        deploy={"target": "cluster", "kubeconfig": str(kubeconfig), "api_retries": 0},
    )
    store.create_model_version(NAME, "file:///tmp/m1")
    store.create_model_version(NAME, "file:///tmp/m2")
    store.set_registered_model_alias(NAME, "champion", "2")
    write_journal(NAME, "2", "1", RUNNING)
    with pytest.raises(RecoveryIncomplete, match=f"127.0.0.1:{port}"):
        recover(params)
    assert read_journal(NAME)["version"] == "2"
    assert str(store.get_model_version_by_alias(NAME, "champion").version) == "2"


def test_recovery_without_cluster_state_moves_the_alias_back_and_closes(store, tmp_path):
    params = small_params(tmp_path / "p")
    store.create_model_version(NAME, "file:///tmp/m1")
    store.create_model_version(NAME, "file:///tmp/m2")
    store.set_registered_model_alias(NAME, "champion", "2")
    write_journal(NAME, "2", "1", {})  # a dry-run promotion journals no cluster state
    assert "restored to v1" in recover(params)
    assert read_journal(NAME) is None
    assert str(store.get_model_version_by_alias(NAME, "champion").version) == "1"

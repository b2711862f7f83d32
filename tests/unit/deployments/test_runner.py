"""How served flow runs start: a preloaded fork server by default, or Prefect's spawn."""

from __future__ import annotations

import multiprocessing

import prefect.flow_engine as engine
import prefect.runner._starter_direct as direct
import pytest

from deployments.runner import runner_kind, use_forkserver


@pytest.fixture
def restore_prefect(monkeypatch):
    """Undo the runner patch after each test (monkeypatch restores what it saw first)."""
    monkeypatch.setattr(engine, "multiprocessing", engine.multiprocessing)
    monkeypatch.setattr(direct, "run_flow_in_subprocess", direct.run_flow_in_subprocess)


def test_flow_runs_start_from_the_fork_server_by_default(monkeypatch, restore_prefect):
    monkeypatch.delenv("CTFLOWS_RUNNER", raising=False)
    assert use_forkserver(preload=["json"], warm=False)
    context = engine.multiprocessing.get_context("spawn")
    assert context.get_start_method() == "forkserver"
    assert direct.run_flow_in_subprocess is engine.run_flow_in_subprocess
    assert engine.multiprocessing.Process is multiprocessing.Process  # the rest is untouched


def test_spawn_keeps_prefects_own_start_method(monkeypatch, restore_prefect):
    monkeypatch.setenv("CTFLOWS_RUNNER", "spawn")
    before = engine.multiprocessing
    assert not use_forkserver(preload=["json"], warm=False)
    assert engine.multiprocessing is before
    assert engine.multiprocessing.get_context("spawn").get_start_method() == "spawn"


def test_an_unknown_runner_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("CTFLOWS_RUNNER", "threads")
    with pytest.raises(ValueError, match="CTFLOWS_RUNNER must be 'forkserver' or 'spawn'"):
        runner_kind()


def test_every_preloaded_module_exists():
    """A module renamed by an upgrade would be skipped by the fork server without a word,
    and every run would import it again: the list must name modules that exist."""
    import importlib.util

    from deployments.runner import PRELOAD

    missing = [name for name in PRELOAD if importlib.util.find_spec(name) is None]
    assert not missing, f"PRELOAD names modules that do not exist: {missing}"
    assert PRELOAD[-1] == "deployments.forkserver_warm"  # it uses what the others import


def test_the_fork_server_starts_when_mlflows_private_map_function_is_gone():
    """The fork server stops on anything but ImportError in its preload list: a renamed
    private MLflow function must cost each run its own map, not the fork server."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = (
        "from mlflow.utils import requirements_utils as r\n"
        "del r._init_modules_to_packages_map\n"
        "import deployments.forkserver_warm\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout
    assert "MLflow's package map not prepared" in done.stderr

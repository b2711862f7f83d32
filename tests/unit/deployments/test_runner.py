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

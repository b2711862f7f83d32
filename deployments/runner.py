"""Start served flow runs from a fork server that has already imported ctflows' libraries.

What Prefect 3.8.8 does (prefect/runner/runner.py, `_resolve_starter`):
`prefect.serve(*deployments)` registers each deployment with its storage only, so every flow
run is started by `EngineCommandStarter` as `python -m prefect.engine`, a new interpreter
that loads the flow from its entrypoint and imports Prefect, pandas, Great Expectations,
scikit-learn, LightGBM, MLflow and DVC before the first task: seconds on every run. Only a
flow registered in memory (what `Runner.add_flow` and `flow.serve()` do) goes through
`DirectSubprocessStarter`, which calls `prefect.flow_engine.run_flow_in_subprocess`: still a
fresh process, started with `multiprocessing.get_context("spawn")`, so it imports everything
again too. Prefect has no option for a warm worker; `prefect/runner/_starter_direct.py`
names its module-level `run_flow_in_subprocess` reference as the point to override.

What this module does: `serve_deployments()` registers each deployment with its flow object
in memory (as `Runner.add_flow` does), and `use_forkserver()` makes that start path use
Python's `forkserver` method instead of `spawn`, with the libraries preloaded in the server.
Each flow run is still its own process, forked from a small single-threaded server that has
only imported modules (no event loop, no client, no open files of the runner), so a crash or
a kill of one run touches nothing else, and Prefect's state handling, logs, cancellation
(by pid) and crash detection are unchanged. What changes for users:

- code is imported once, when serving starts: restart `deployments.serve` after editing
  flows/ or tasks/ or changing installed packages (params.yaml is still read by every run);
  a package replaced under a running server breaks runs that import its submodules late;
- the fork server starts in the background with the runner, so the first run may still wait
  for the imports; the next ones do not.

`CTFLOWS_RUNNER=spawn` keeps Prefect's own behaviour (`prefect.serve`, a new interpreter per
run).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

ENV = "CTFLOWS_RUNNER"

# What a continuous-training run imports; a module that fails to import is skipped by the
# fork server (Python ignores ImportError in the preload list) and is imported by the run.
PRELOAD: tuple[str, ...] = (
    "flows.continuous_training",
    "pandas",
    "pyarrow.parquet",
    "great_expectations",
    "great_expectations.expectations",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.preprocessing",
    "sklearn.metrics",
    "lightgbm",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.tracking",
    # imported lazily by the first MLflow call of a run: 0.5 s that every run, a skip too, paid
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.runtime.migration",
    "dvc.api",
    "networkx",  # DVC's repository graph
    "git",
    "pygit2",
    "dvc.repo",
    "kubernetes.client",
    "kubernetes.config",
    "slack_sdk.webhook",
    "matplotlib.pyplot",
    "pyarrow.dataset",
    "psutil",
    "oras.provider",
    # imported by a run's first call of each, found by listing what a served run imported
    # beyond this list (0.3 s of imports a full run paid, 0.1 s a skipped one)
    "kubernetes.client.api.apps_v1_api",  # the client's lazy __getattr__ imports it per run
    "mlflow.pyfunc",
    "mlflow.tracing.export",
    "mlflow.tracing.processor.base_mlflow",
    "mlflow.tracing.processor.otel",
    "mlflow.store.tracking.sqlalchemy_workspace_store",
    "mlflow.store.model_registry.sqlalchemy_workspace_store",
    "mlflow.models.display_utils",
    "mlflow.utils.spark_utils",
    "alembic.command",
    "alembic.config",
    "prefect.task_engine",
    "prefect.concurrency.sync",
    "prefect.artifacts",
    "prefect.utilities.visualization",
    "pydantic.validate_call_decorator",
    "dvc.repo.plots",
    "dvc.repo.artifacts",
    "dvc.repo.datasets",
    "dvc.repo.stage",
    "dvc.data_cloud",
    "dvc.cachemgr",
    "dvc.dirs",
    "dvc_data.hashfile.db.local",
    "dulwich.worktree",
    "dulwich.ignore",
    "fsspec.implementations.chained",
    "netrc",
    "matplotlib.backends.backend_agg",
    "olot.oci.oci_image_layout",
    "oras.layout",
    "deployments.serving.app",
    "tasks.encoders",
    "tasks.shadow",
    "deployments.forkserver_warm",  # last: computes, once, what every run would compute
)


class _ForkserverMultiprocessing:
    """`multiprocessing` as Prefect's flow engine sees it, with every context a fork server."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def runner_kind() -> str:
    """`forkserver` (the default) or `spawn`, from $CTFLOWS_RUNNER."""
    kind = os.environ.get(ENV, "forkserver").strip().lower() or "forkserver"
    if kind not in {"forkserver", "spawn"}:
        raise ValueError(f"${ENV} must be 'forkserver' or 'spawn', not {kind!r}")
    return kind


def use_forkserver(preload: Sequence[str] = PRELOAD, warm: bool = True) -> bool:
    """Make Prefect's runner start in-memory flow runs from a preloaded fork server.

    Returns False (and changes nothing) where the fork server is unavailable or
    $CTFLOWS_RUNNER is `spawn`. With ``warm`` the fork server starts now, in the background.
    """
    if runner_kind() == "spawn":
        log.info("flow runs start as spawned processes ($%s=spawn)", ENV)
        return False
    if "forkserver" not in multiprocessing.get_all_start_methods():
        log.warning("no fork server on this platform: flow runs start as spawned processes")
        return False
    import prefect.flow_engine as engine
    import prefect.runner._starter_direct as direct

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    engine.multiprocessing = _ForkserverMultiprocessing(context)  # type: ignore[assignment]
    direct.run_flow_in_subprocess = engine.run_flow_in_subprocess
    if warm:
        threading.Thread(
            target=multiprocessing.forkserver.ensure_running, name="forkserver", daemon=True
        ).start()
    log.info("flow runs start from a fork server preloaded with %d modules", len(preload))
    return True


def serve_deployments(deployments: Sequence[Any], poll_seconds: float | None = None) -> None:
    """`prefect.serve(*deployments)`, with every flow run forked from the preloaded server,
    looking for runs to start every ``poll_seconds`` (default: Prefect's setting).

    With $CTFLOWS_RUNNER=spawn this is exactly `prefect.serve`.
    """
    import asyncio

    from prefect import serve
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    if runner_kind() == "spawn":
        serve(*deployments, print_starting_message=False)
        return
    runner = Runner(pause_on_shutdown=True, query_seconds=poll_seconds)
    modules: list[str] = []
    for deployment in deployments:
        deployment_id: Any = runner.add_deployment(deployment)  # sync here: a UUID
        flow, module = _flow_of(deployment)
        if flow is not None:  # what Runner.add_flow does after add_deployment
            runner._deployment_registry.register_flow(deployment_id, flow)
            modules.append(module)
    use_forkserver(tuple(dict.fromkeys([*modules, *PRELOAD])))
    try:
        asyncio.run(_start_with_wake(runner))
    except (KeyboardInterrupt, TerminationSignal, asyncio.CancelledError) as exc:
        log.info("received %s, shutting down", type(exc).__name__)


async def _start_with_wake(runner: Any) -> None:
    """``runner.start()``, with ``wake_on_new_runs`` alongside for as long as it serves.

    SIGTERM cancels this task, and so the runner, between two steps of the event loop.
    Prefect's own handler raises SystemExit from inside whatever code runs at that moment:
    when that was a run being started, the runner caught it as a failed start and went on
    serving, and the process never ended (seen in a test's teardown).

    From SIGTERM on, no new run starts: the runner's shutdown pauses its deployments and
    waits for the runs it already started, and its poll (and the wake) went on starting
    runs meanwhile — for a minute in CI, while a SQLite-backed server held its write lock."""
    import asyncio

    loop, main = asyncio.get_running_loop(), asyncio.current_task()
    assert main is not None

    def stop(*_: Any) -> None:  # in the signal handler (the loop's thread, between steps)
        log.info("SIGTERM received, stopping the runner: runs already started finish")
        runner.stopping = True  # what Runner.astop() sets: polls and wakes start nothing
        poller = getattr(runner, "_scheduled_run_poller", None)
        if poller is not None:
            poller.stopping = True
        loop.call_soon_threadsafe(main.cancel)

    previous = signal.getsignal(signal.SIGTERM)
    runner.handle_sigterm = stop  # what Runner.start() installs for SIGTERM
    wake = asyncio.create_task(wake_on_new_runs(runner))
    try:
        await runner.start()
    finally:
        wake.cancel()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)  # the loop ends: ours no longer applies


async def wake_on_new_runs(runner: Any, retry_seconds: float = 10.0) -> None:
    """Look for runs to start as soon as the server announces a scheduled flow run, rather
    than at the runner's next poll (half a poll interval saved on average, on every run).

    Subscribes to the server's `prefect.flow-run.Scheduled` events (the websocket Prefect's
    own automations read); each asks ``_look_when_due`` for a look, which does what a poll
    does. Polling goes on unchanged: a lost connection is opened again after
    ``retry_seconds``, and meanwhile runs start at the next poll, as without this.
    """
    import asyncio
    import datetime

    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    name = EventNameFilter(name=["prefect.flow-run.Scheduled"])
    due = asyncio.Event()
    looking = asyncio.create_task(_look_when_due(runner, due))
    try:
        while True:
            try:
                now = datetime.datetime.now(datetime.UTC)
                since = EventOccurredFilter(since=now)  # no backfill of old events
                async with get_events_subscriber(
                    filter=EventFilter(event=name, occurred=since)
                ) as events:
                    async for _ in events:
                        due.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the poll still starts every run; say why it is slower
                log.warning(
                    "not woken by flow-run events (%s: %s); runs start at the next poll, "
                    "retrying in %.0f s",
                    type(exc).__name__,
                    exc,
                    retry_seconds,
                )
            await asyncio.sleep(retry_seconds)
    finally:
        looking.cancel()


async def _look_when_due(runner: Any, due: Any) -> None:
    """One look for due runs per burst of events (the scheduler announces its runs for the
    next hour at once): events that arrive during a look ask for one more, not one each.

    A look is the runner's own poll, `_scheduled_run_poller._get_and_submit_flow_runs()`, in
    the runner's event loop: it starts only due runs of its deployments, each once."""
    while True:
        await due.wait()
        due.clear()
        poller = getattr(runner, "_scheduled_run_poller", None)
        submit = getattr(poller, "_get_and_submit_flow_runs", None)
        if submit is None:  # not started yet, or a Prefect without it: the poll does it
            continue
        try:
            await submit()
        except Exception as exc:  # the poll loop goes on regardless, and looks again
            log.warning("a look for due runs failed: %s: %s", type(exc).__name__, exc)


def _flow_of(deployment: Any) -> tuple[Any, str]:
    """The flow object of a deployment's ``flows/module.py:function`` entrypoint, and its
    module; (None, "") when it is not importable from here (Prefect then runs it from storage)."""
    import importlib

    path, _, name = str(deployment.entrypoint or "").partition(":")
    module = path.removesuffix(".py").replace("/", ".")
    try:
        return getattr(importlib.import_module(module), name), module
    except (ImportError, AttributeError, ValueError, TypeError):
        log.warning("flow runs of %s start from storage: %s not importable", deployment.name, path)
        return None, ""

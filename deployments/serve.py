"""Serve ctflows' deployments from one long-lived process, with no work pool (the default).

    python -m deployments.serve [--params params.yaml] [--server] [--webhook-port 8787]
                                [--host 127.0.0.1]

Builds the deployments of deployments/definitions.py (schedules, the data-landed trigger, the
manual deployment, the drift monitor, the repair) and runs their flow runs from this process.
`--server` starts a Prefect server on loopback first (state in the params' state dir) when no
PREFECT_API_URL is set; the server served on is recorded in <state dir>/prefect/server.json
for `ctflows`, and the `export PREFECT_API_URL=...` line for other shells is printed;
`--webhook-port` also starts the signed-webhook receiver on `--host`,
unless no webhook secret is configured: then everything else is served and the receiver is off.
Before serving, flow `repair` finishes undoing any promotion a killed run left half-done; while
serving, a thread looks for a stale journal every `triggers.repair_seconds` and starts
`repair/<model>` only for one (deployments/repair_watch.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from deployments.definitions import REPAIR_FLOW, DeploymentSpec, project_specs
from deployments.server import (
    prefect_server,
    recorded_server,
    runtime_settings,
    server_file,
    serving_on,
)
from tasks.config import load_params
from tasks.services import install_redaction

log = logging.getLogger(__name__)


def load_flow(entrypoint: str) -> Any:
    """The flow object at ``flows/module.py:function``."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def build_deployment(spec: DeploymentSpec) -> Any:
    """A RunnerDeployment for ``spec``: the same names, schedules and triggers as prefect.yaml."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron, Interval

    schedules = None
    if spec.cron:
        schedules = [Cron(spec.cron, timezone=spec.timezone)]
    elif spec.interval_seconds:
        schedules = [Interval(spec.interval_seconds)]
    return load_flow(spec.entrypoint).to_deployment(
        name=spec.name,
        description=spec.description,
        parameters=spec.parameters,
        schedules=schedules,
        triggers=[DeploymentEventTrigger(**trigger) for trigger in spec.triggers] or None,
        concurrency_limit=(
            ConcurrencyLimitConfig(
                limit=spec.concurrency_limit,
                collision_strategy=ConcurrencyLimitStrategy(spec.collision_strategy),
            )
            if spec.concurrency_limit
            else None
        ),
    )


@contextlib.contextmanager
def maybe_webhook(params_file: str, host: str, port: int | None) -> Any:
    """The webhook receiver inside this process (it cannot outlive the served deployments),
    or a line saying why it is off."""
    if not port:
        print("webhook receiver off: no --webhook-port given", flush=True)
        yield None
        return
    from deployments.receiver import make_receiver
    from deployments.webhook import NoSecret

    try:
        receiver = make_receiver(params_file, host, port)
    except NoSecret as exc:
        print(
            f"webhook receiver off: {exc}; serving the schedules, the data-landed event "
            "trigger and the manual deployments without it",
            flush=True,
        )
        yield None
        return
    with receiver.in_thread():
        print(f"webhook receiver on {receiver.url}", flush=True)
        yield receiver


def repair_at_start(params_file: str) -> None:
    """Flow `repair` once, before anything is served: a deploy killed with the last served
    process is put right now, not at the next training run. The killed run's training slot
    frees itself within a lease (plus the server's 15 s sweep), so this waits that long for it.
    A failure is reported, and the repair watch (deployments/repair_watch.py) tries again."""
    from flows.repair import repair
    from tasks.train import LEASE_SECONDS

    try:
        note = repair(params_file=params_file, wait_seconds=LEASE_SECONDS + 30)
    except Exception as exc:
        print(
            f"repair at start failed: {type(exc).__name__}: {exc}; "
            "the repair watch tries again every triggers.repair_seconds",
            flush=True,
        )
        return
    print(f"repair at start: {note}", flush=True)


def serve_all(params_file: str) -> None:
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    params = load_params(params_file)
    specs = project_specs(params_file)  # every model of the project: models.d/*, or this file
    poll = params.triggers.poll_seconds  # Prefect's setting takes whole seconds; the runner not
    settings = {PREFECT_RUNNER_POLL_FREQUENCY: max(1, round(poll)), **runtime_settings()}
    with temporary_settings(updates=settings):
        for model_params in sorted({s.parameters["params_file"] for s in specs}):
            repair_at_start(model_params)
        deployments = [build_deployment(spec) for spec in specs]
        print("serving " + ", ".join(spec.full_name for spec in specs), flush=True)
        from deployments.repair_watch import RepairWatch, Watched
        from deployments.runner import runner_kind, serve_deployments

        print(f"flow runs start by {runner_kind()} (CTFLOWS_RUNNER; see deployments/runner.py)")
        watched = [
            Watched(s.name, s.parameters["params_file"])
            for s in specs
            if s.flow_name == REPAIR_FLOW
        ]
        with RepairWatch(watched, params.triggers.repair_seconds).in_thread():
            serve_deployments(deployments, poll_seconds=poll)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description="Serve ctflows' deployments (and the webhook receiver) in this process.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--server", action="store_true", help="start a Prefect server on loopback if none is set"
    )
    parser.add_argument(
        "--server-port", type=int, default=4200, help="its port (default: %(default)s)"
    )
    parser.add_argument(
        "--webhook-port", type=int, help="also run the webhook receiver on this port"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the webhook receiver's bind address (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect call
    install_redaction()  # the receiver's and the served runs' lines hold no credentials
    params_file = str(Path(args.params).resolve())
    signal.signal(signal.SIGTERM, _exit_on_term)  # so the server and webhook stop with us
    state_dir = load_params(params_file).state_dir
    with contextlib.ExitStack() as stack:
        url = os.environ.get("PREFECT_API_URL")
        if args.server and not url:
            running = recorded_server(state_dir)
            if running:  # a second server on the same database would split the training slot
                raise SystemExit(
                    f"a Prefect server of this project already runs at {running} (recorded in "
                    f"{server_file(state_dir)}, e.g. by a `ctflows rollback` still working): wait "
                    f"for it to end, or serve on it with `PREFECT_API_URL={running} make serve`"
                )
            url = stack.enter_context(prefect_server(state_dir / "prefect", args.server_port))
            print(f"Prefect server and UI on {url.removesuffix('/api')}", flush=True)
        receiver = stack.enter_context(maybe_webhook(params_file, args.host, args.webhook_port))
        if url:  # every client of this process, and `ctflows`, on this one server
            hook = receiver.url if receiver is not None else None
            stack.enter_context(serving_on(state_dir, url, webhook=hook))
        serve_all(params_file)


if __name__ == "__main__":
    main()

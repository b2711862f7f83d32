"""Serve ctflows' deployments from one long-lived process, with no work pool (the default).

    python -m deployments.serve [--params params.yaml] [--server] [--webhook-port 8787]

Builds the deployments of deployments/definitions.py (schedules, the data-landed trigger, the
manual deployment, the drift monitor) and runs their flow runs in this process. `--server`
starts a Prefect server on loopback first (state in the params' state dir) when no
PREFECT_API_URL is set; `--webhook-port` also starts the signed-webhook receiver.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deployments.definitions import DeploymentSpec, deployment_specs
from deployments.server import prefect_server, runtime_settings
from tasks.config import load_params

log = logging.getLogger(__name__)


def build_deployment(spec: DeploymentSpec) -> Any:
    """A RunnerDeployment for ``spec``: the same names, schedules and triggers as prefect.yaml."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.continuous_training import continuous_training
    from flows.drift_monitor import drift_monitor

    flow: Any = continuous_training if spec.flow_name == "continuous-training" else drift_monitor
    return flow.to_deployment(
        name=spec.name,
        description=spec.description,
        parameters=spec.parameters,
        schedules=[Cron(spec.cron, timezone=spec.timezone)] if spec.cron else None,
        triggers=[DeploymentEventTrigger(**trigger) for trigger in spec.triggers] or None,
        concurrency_limit=(
            ConcurrencyLimitConfig(
                limit=spec.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            )
            if spec.concurrency_limit
            else None
        ),
    )


@contextlib.contextmanager
def webhook_thread(params_file: str, port: int) -> Iterator[None]:
    """The webhook receiver inside this process: it cannot outlive the served deployments."""
    from deployments.webhook import make_server

    server = make_server(params_file, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    print(f"webhook receiver on http://127.0.0.1:{port}/hooks/data-landed", flush=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def serve_all(params_file: str) -> None:
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    params = load_params(params_file)
    specs = deployment_specs(params, params_file)
    settings = {PREFECT_RUNNER_POLL_FREQUENCY: params.triggers.poll_seconds, **runtime_settings()}
    with temporary_settings(updates=settings):
        deployments = [build_deployment(spec) for spec in specs]
        print("serving " + ", ".join(spec.full_name for spec in specs), flush=True)
        from deployments.runner import runner_kind, serve_deployments

        print(f"flow runs start by {runner_kind()} (CTFLOWS_RUNNER; see deployments/runner.py)")
        serve_deployments(deployments)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve ctflows' deployments in this process.")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--server", action="store_true", help="start a Prefect server on loopback if none is set"
    )
    parser.add_argument("--server-port", type=int, default=4200)
    parser.add_argument("--webhook-port", type=int, help="also run the webhook receiver here")
    args = parser.parse_args(argv)
    params_file = str(Path(args.params).resolve())
    signal.signal(signal.SIGTERM, _exit_on_term)  # so the server and webhook stop with us
    with contextlib.ExitStack() as stack:
        if args.server and not os.environ.get("PREFECT_API_URL"):
            home = load_params(params_file).state_dir / "prefect"
            url = stack.enter_context(prefect_server(home, args.server_port))
            print(f"Prefect server and UI on {url.removesuffix('/api')}", flush=True)
        if args.webhook_port:
            stack.enter_context(webhook_thread(params_file, args.webhook_port))
        serve_all(params_file)


if __name__ == "__main__":
    main()

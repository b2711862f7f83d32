"""`make demo`: the continuous-training loop over successive daily batches, on real components.

Starts a Prefect server on loopback, lands four data versions in a git+DVC data repository
(.ctflows/demo/data-repo, remote .ctflows/dvc-remote), and runs the flow on each: the first
becomes champion, a bigger batch gives a better model that is promoted, a corrupted batch is
stopped by validation, and a rerun of an already-trained version is skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from deployments.server import prefect_server
from tasks.config import load_params
from tasks.data import corrupt_batch, init_data_repo, make_batch, publish_batch, resolve_version
from tasks.deploy import resolve_mode

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the first batch")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's task logs")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="deploy to the cluster params name (default: dry run, whatever params.yaml says)",
    )
    args = parser.parse_args(argv)
    if not args.verbose:  # one line per run: no download progress bars between them
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    params = load_params(args.params)
    state = params.state_dir
    if not args.cluster:
        args.params = str(dry_run_params(Path(args.params), state / "demo" / "params.yaml"))
        params = load_params(args.params)
    print(f"deploy: {resolve_mode(params.deploy)} (--cluster deploys to the cluster params name)")
    data_repo, remote = state / "demo" / "data-repo", state / "dvc-remote"
    path = params.data.path
    print(f"ctflows demo — state in {state}")
    init_data_repo(data_repo, remote)
    batches = [
        ("day 1: first batch", make_batch(1, args.rows, seed=0)),
        ("day 2: six times more data", make_batch(2, args.rows * 6, seed=0)),
        ("day 3: corrupted upstream", corrupt_batch(make_batch(3, args.rows * 3, seed=0))),
    ]
    revs = []
    for label, df in batches:
        revs.append((label, publish_batch(data_repo, df, path, label)))
    revs.append(("day 2 again: same data, params, code", revs[1][1]))
    print(f"landed {len(batches)} data versions in {data_repo} (DVC remote {remote})\n")

    if not args.verbose:
        logging.getLogger("prefect").setLevel(logging.CRITICAL)  # the demo prints one line a run
    print("starting a Prefect server on loopback ...", flush=True)
    with prefect_server(state / "prefect") as api_url:
        from flows.continuous_training import continuous_training

        for label, rev in revs:
            started = time.perf_counter()
            state_ = continuous_training(
                rev=rev, repo=str(data_repo), params_file=args.params, return_state=True
            )
            took = time.perf_counter() - started
            if state_.is_completed():
                line = state_.result().line()
            else:
                md5 = resolve_version(str(data_repo), path, rev).md5
                exc = _exception(state_)
                line = f"{'failed':<8}  data={md5[:10]}  {type(exc).__name__}: {exc}"[:400]
            print(f"{label:<38} {took:5.1f}s  {line}", flush=True)
    ui = api_url.removesuffix("/api")
    print(
        f"""
What it produced:
  MLflow runs, models and the @{params.registry.alias} alias: {state / "mlflow.db"}
  Prefect flow runs and gate reports:                {state / "prefect"}
  Slack messages (no webhook set):                   {state / "outbox" / "slack.jsonl"}
  Kubernetes patches (dry run, no cluster):          {state / "deploy" / "dry-run.jsonl"}
  Model images (OCI layout, built locally):          {state / "images"}

Open the UIs on it:  make ui
  (MLflow at http://127.0.0.1:5000, Prefect at {ui.rsplit(":", 1)[0]}:4200)
Ask the command:     .venv/bin/ctflows status   (and history, rollback, freeze: --help)"""
    )
    return 0


def dry_run_params(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose deploy step is the dry run: the demo never touches a cluster
    unless asked (``--cluster``). Relative paths become absolute, so the copy means the same."""
    import yaml

    params = load_params(source)
    raw = yaml.safe_load(source.read_text())
    raw.setdefault("project", {})["state_dir"] = str(params.state_dir)
    raw.setdefault("validate", {})["suite"] = str(params.validate_.suite)
    raw["data"]["repo"] = params.data.repo
    raw["deploy"]["target"] = "dry-run"
    raw["deploy"]["kubeconfig"] = None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def _exception(state: object) -> BaseException:
    try:
        state.result()  # type: ignore[attr-defined]
    except BaseException as exc:  # the flow's own exception, re-raised by Prefect
        return exc
    return RuntimeError("flow run did not complete")


if __name__ == "__main__":
    sys.exit(main())

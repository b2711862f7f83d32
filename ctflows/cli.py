"""`ctflows`: the on-call engineer's command for the models of one installation.

Exit codes (stable, for scripts):
  0  done (for `run`: the flow run completed, whatever it decided; see --json "kind")
  1  the operation ran and failed (flow run failed or crashed, rollout failed)
  2  bad input or refused, nothing changed (unknown model, version, invalid params, ...)
  3  a service it needs did not answer or is not configured (MLflow, Prefect, Kubernetes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3

EPILOG = """exit codes: 0 done, 1 failed, 2 bad input or refused (nothing changed),
3 a service did not answer. The project is the current directory, or --project / $CTFLOWS_PROJECT.
Models: params.yaml, or one folder each in models.d/ (`ctflows init`)."""


def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1 (argparse: exit 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument(
        "--project",
        type=Path,
        default=Path(os.environ.get("CTFLOWS_PROJECT", ".")),
        help="project folder holding params.yaml (default: $CTFLOWS_PROJECT or the cwd)",
    )
    parser = argparse.ArgumentParser(
        prog="ctflows",
        description="Operate the models of a ctflows installation: state, history, rollback, "
        "promotion, freezes, runs, and a first suite for a new model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=description,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("models", "list the models of this installation", "List the declared models.")
    p = add(
        "status",
        "champion, cluster, journal, freeze, last decisions, next run",
        "Show a model's state (every model's without MODEL): the champion (version, run, data "
        "md5, when and why promoted), what the cluster runs and whether it matches, an open "
        "crash journal, a freeze, the last decisions and the next scheduled run.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="model name (default: all)")
    p.add_argument("--limit", type=positive, default=5, help="decisions to show (default: 5)")
    p = add(
        "history",
        "every decision, newest first",
        "Every decision on a model (promoted, rejected, skipped, failed, frozen, rolled back), "
        "newest first, with the gate or step that decided and who acted.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--limit", type=positive, default=50, help="decisions to show (default: 50)")
    p = add(
        "rollback",
        "serve the previous champion again (cluster first, then the alias)",
        "Roll the cluster back to the previous champion (or --to VERSION), wait for it to "
        "serve, then move the alias; journaled, recorded with who and why, sent to Slack. "
        "Allowed while promotions are frozen.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--to", metavar="VERSION", help="version to go back to")
    p.add_argument("--reason", default="", help="why, for Slack and the history")
    p = add(
        "promote",
        "make a validated version champion by hand",
        "Make VERSION champion the way the flows do (cluster first, then alias, journal, "
        "Slack). Only a version that passed its gates, and not while frozen.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--reason", required=True, help="why (required)")
    p = add(
        "freeze",
        "stop promotions: runs train and gate but never promote",
        "Freeze promotions of MODEL (an incident, a release freeze): runs still train and gate, "
        "and report `frozen` in their outcome and on Slack.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--reason", required=True, help="why (required)")
    p = add("unfreeze", "allow promotions again", "Lift the freeze of MODEL.")
    p.add_argument("model", metavar="MODEL")
    p = add(
        "run",
        "start a training run and follow it until it ends",
        "Start continuous-training/<MODEL>-manual on the Prefect server (served by `make "
        "serve`) and follow its logs until it ends, or run the flow in this process (--local).",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--rev", help="git revision of the data (default: data.rev)")
    p.add_argument("--force", action="store_true", help="retrain even if already decided")
    p.add_argument("--dry-run", action="store_true", help="train and gate, change nothing")
    p.add_argument("--local", action="store_true", help="run in this process, no deployment")
    p.add_argument(
        "--redecide",
        action="store_true",
        help="decide again a rejection of this data that came only from gates measuring the "
        "machine (latency, predict_memory); recorded in the history with who asked",
    )
    p = add(
        "init",
        "profile a trusted batch into a first suite and params.yaml",
        "Profile a trusted batch (parquet or CSV) into models.d/MODEL/: a Great Expectations "
        "suite (columns, types, null rates, ranges with a margin, category sets, label domain) "
        "and a params.yaml with the columns filled in, for you to review.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--from", dest="source", type=Path, required=True, metavar="PATH")
    p.add_argument("--label", help="label column (default: a column named label/target/churned)")
    p.add_argument(
        "--task",
        choices=["binary", "multiclass", "regression"],
        help="override the task read from the label (two values: binary; few discrete "
        "values: multiclass; numbers with many values: regression)",
    )
    p.add_argument(
        "--id-column", help="id column (default: guessed from *_id / id; none: no id column)"
    )
    p.add_argument(
        "--timestamp-column",
        help="timestamp column (default: the datetime column; none: no timestamp column)",
    )
    p.add_argument("--margin", type=float, default=0.1, help="range margin (default: 0.1)")
    p.add_argument(
        "--repo",
        type=Path,
        help="git+DVC data repository the batch is placed in (default: the project)",
    )
    p.add_argument(
        "--path", help="path of the batch inside the data repository (default: data/MODEL.parquet)"
    )
    p.add_argument(
        "--create-repo",
        action="store_true",
        help="create --repo (git init, dvc init, a local DVC remote beside it: REPO-dvc-remote)",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="widen MODEL's existing suite from a new trusted batch (--from), showing the "
        "changed expectations (with --dry-run: only show them)",
    )
    p.add_argument("--dry-run", action="store_true", help="with --update: show, write nothing")
    p = add(
        "check",
        "params, columns and suite against a data version, without training",
        "The dry check before a first real run: MODEL's params load, the data version (data.rev "
        "or --rev) resolves and is fetched through DVC, has the columns params name, and passes "
        "the suite. Exit 0 passed, 1 the suite failed, 2 params or data not usable.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--rev", help="git revision of the data (default: data.rev)")
    p = add(
        "land",
        "a file as MODEL's next data version, then its run",
        "Add FILE (parquet or CSV) as the next version of MODEL's data.path in its data.repo: "
        "checked against the columns and suite first (nothing landed when it fails), written "
        "as Parquet, dvc add, git commit, dvc push; then the run on it (in this process), "
        "printing the revision, md5 and the run's outcome.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("source", type=Path, metavar="FILE")
    p.add_argument("--no-run", action="store_true", help="land the data, start no run")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="with the webhook: return once the receiver accepted the run, not following it",
    )
    p.add_argument(
        "--webhook",
        default=os.environ.get("CTFLOWS_WEBHOOK_URL"),
        metavar="URL",
        help="the receiver of `make serve` (e.g. http://127.0.0.1:8787; default "
        "$CTFLOWS_WEBHOOK_URL, else the receiver a running `make serve` of this project "
        "recorded): send it the signed data-landed webhook and follow the run it starts, "
        "instead of running here",
    )
    return parser


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(text)


def fail(args: argparse.Namespace, code: int, message: str) -> int:
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}))
    print(f"ctflows {args.command}: {message}", file=sys.stderr)
    return code


def dispatch(args: argparse.Namespace) -> int:
    from ctflows import commands

    handler = getattr(commands, f"cmd_{args.command}")
    code: int = handler(args)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctflows import output

    with output.configured():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tasks.errors import CtflowsError

    try:
        code = dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
        return code
    except BrokenPipeError:  # `ctflows history --json | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second BrokenPipeError when Python exits
        return EXIT_OK
    except KeyboardInterrupt:
        return fail(args, 130, "interrupted")
    except CtflowsError as exc:
        return fail(args, exit_code(exc), str(exc))
    except Exception as exc:
        from tasks.services import redact

        return fail(args, exit_code(exc), redact(f"{type(exc).__name__}: {exc}"))


def exit_code(exc: BaseException) -> int:
    """The exit code of an error, by its kind (tasks.errors): the one place they are mapped."""
    from tasks.errors import ErrorKind, kind_of

    return {
        ErrorKind.BAD_INPUT: EXIT_REFUSED,
        ErrorKind.FAILED: EXIT_FAILED,
        ErrorKind.UNAVAILABLE: EXIT_UNAVAILABLE,
    }[kind_of(exc)]


if __name__ == "__main__":
    sys.exit(main())

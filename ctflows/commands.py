"""One function per `ctflows` subcommand: parse nothing, print the result, return the exit code."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ctflows import catalog, operate, status
from ctflows.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, emit, exit_code, fail
from ctflows.connect import require_project_server, use_project_server
from ctflows.operate import classified
from tasks.ledger import read_decisions


def _model(args: argparse.Namespace) -> catalog.Model:
    return catalog.find(args.project, args.model)


def cmd_models(args: argparse.Namespace) -> int:
    models = catalog.discover(args.project)
    rows = [{"name": m.name, "params_file": str(m.params_file)} for m in models]
    emit(args, rows, "\n".join(f"{m.name:<24} {m.params_file}" for m in models))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    models = [_model(args)] if args.model else catalog.discover(args.project)
    use_project_server(args.project)
    states = [status.gather(m, args.limit) for m in models]
    payload = [s.to_dict() for s in states]
    emit(args, payload[0] if args.model else payload, "\n\n".join(map(status.render, states)))
    return EXIT_UNAVAILABLE if any(s.unavailable.get("mlflow") for s in states) else EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    model = _model(args)
    params = model.params()
    status.use_tracking(params)
    with classified(params):
        decisions = read_decisions(params, args.limit)
    text = (
        "\n".join(status.decision_line(d) for d in decisions) or f"{model.name}: no decisions yet"
    )
    emit(args, [asdict(d) for d in decisions], text)
    return EXIT_OK


def _outcome_text(outcome: dict) -> str:
    from tasks.outcome import RunOutcome

    return RunOutcome(**outcome).line()


def cmd_rollback(args: argparse.Namespace) -> int:
    model = _model(args)
    require_project_server(args.project, "ctflows rollback")
    with classified(model.params()):
        outcome = operate.rollback(model, args.to, args.reason)
    emit(args, outcome, _outcome_text(outcome))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    model = _model(args)
    require_project_server(args.project, "ctflows promote")
    with classified(model.params()):
        outcome = operate.promote(model, args.version, args.reason)
    emit(args, outcome, _outcome_text(outcome))
    return EXIT_OK


def cmd_freeze(args: argparse.Namespace) -> int:
    model = _model(args)
    with classified(model.params()):
        frozen = operate.freeze(model, args.reason)
    emit(
        args,
        {"model": model.name, "frozen": frozen},
        f"{model.name}: promotions frozen by {frozen['actor']}: {frozen['reason']}\n"
        "runs still train and gate, and report `frozen`; `ctflows unfreeze` lifts it",
    )
    return EXIT_OK


def cmd_unfreeze(args: argparse.Namespace) -> int:
    model = _model(args)
    with classified(model.params()):
        lifted = operate.unfreeze(model)
    emit(
        args,
        {"model": model.name, "lifted": lifted},
        f"{model.name}: promotions allowed again (freeze by {lifted['actor']} since "
        f"{lifted['at']}: {lifted['reason']})",
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    model = _model(args)
    require_project_server(args.project, "ctflows run")
    if args.local:
        with classified(model.params()):
            ok, result = operate.run_local(model, args.rev, args.force, args.dry_run)
        if isinstance(result, BaseException):  # the flow's error: its kind is the exit code
            return fail(args, exit_code(result), f"{type(result).__name__}: {result}")
        if not ok:
            return fail(args, EXIT_FAILED, str(result))
        emit(args, result, _outcome_text(result))
        return EXIT_OK
    ok, result = operate.run_deployment(
        model, args.rev, args.force, args.dry_run, echo=not args.json
    )
    decision = result["decision"]
    line = f"flow run {result['flow_run_name']} ended {result['state']}"
    if decision:
        line += f": {status.decision_line(status.Decision(**decision))}"
    elif result["message"]:
        line += f": {result['message']}"
    emit(args, result, line)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_init(args: argparse.Namespace) -> int:
    from ctflows import profile

    written = profile.init_model(
        args.project,
        catalog.check_name(args.model),
        args.source,
        label=args.label,
        id_column=args.id_column,
        timestamp_column=args.timestamp_column,
        margin=args.margin,
    )
    emit(
        args,
        asdict(written),
        f"wrote {written.params_file} and {written.suite_file} "
        f"({written.expectations} expectations over {written.columns} columns); "
        "review both, then `ctflows run " + args.model + " --local`",
    )
    return EXIT_OK

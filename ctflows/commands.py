"""One function per `ctflows` subcommand: parse nothing, print the result, return the exit code."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ctflows import catalog, operate, status
from ctflows.catalog import MODELS_DIR
from ctflows.cli import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE, emit, exit_code, fail
from ctflows.connect import project_server, require_project_server, use_project_server
from ctflows.operate import classified
from tasks.ledger import read_decisions


def _model(args: argparse.Namespace) -> catalog.Model:
    return catalog.find(args.project, args.model)


def _broken_line(model: catalog.Model) -> str:
    return f"{model.name:<24} !! params invalid, left out of serve and the receiver:\n" + "\n".join(
        f"    {line}" for line in str(model.error).splitlines()
    )


def cmd_models(args: argparse.Namespace) -> int:
    """Every declared model; one whose params do not load is listed with its error (exit 2)."""
    models = catalog.discover(args.project)
    rows = [{"name": m.name, "params_file": str(m.params_file), "error": m.error} for m in models]
    lines = [_broken_line(m) if m.error else f"{m.name:<24} {m.params_file}" for m in models]
    emit(args, rows, "\n".join(lines))
    return EXIT_REFUSED if any(m.error for m in models) else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    models = [_model(args)] if args.model else catalog.discover(args.project)
    use_project_server(args.project)
    broken = [m for m in models if m.error]
    if args.model and broken:
        return fail(args, EXIT_REFUSED, str(broken[0].error))
    states = [status.gather(m, args.limit) for m in catalog.working(models)]
    payload: list[dict] = [s.to_dict() for s in states]
    payload += [
        {"model": m.name, "params_file": str(m.params_file), "error": m.error} for m in broken
    ]
    text = "\n\n".join([*map(status.render, states), *map(_broken_line, broken)])
    emit(args, payload[0] if args.model else payload, text)
    if any(s.unavailable.get("mlflow") for s in states):
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED if broken else EXIT_OK


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
    with project_server(args.project, "ctflows rollback"), classified(model.params()):
        outcome = operate.rollback(model, args.to, args.reason)
    emit(args, outcome, _outcome_text(outcome))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    model = _model(args)
    with project_server(args.project, "ctflows promote"), classified(model.params()):
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
    if args.redecide and (args.force or args.dry_run):
        return fail(
            args, EXIT_REFUSED, "--redecide re-decides a decision: not with --force or --dry-run"
        )
    redecide = operate.redecide_actor(args.redecide)
    if args.local:
        with project_server(args.project, "ctflows run --local"), classified(model.params()):
            ok, result = operate.run_local(model, args.rev, args.force, args.dry_run, redecide)
        if isinstance(result, BaseException):  # the flow's error: its kind is the exit code
            return fail(args, exit_code(result), f"{type(result).__name__}: {result}")
        if not ok:
            return fail(args, EXIT_FAILED, str(result))
        emit(args, result, _outcome_text(result))
        return EXIT_OK
    require_project_server(args.project, "ctflows run")
    ok, result = operate.run_deployment(
        model, args.rev, args.force, args.dry_run, echo=not args.json, redecide=redecide
    )
    decision = result["decision"]
    line = f"flow run {result['flow_run_name']} ended {result['state']}"
    if decision:
        line += f": {status.decision_line(status.Decision(**decision))}"
    elif result["message"]:
        line += f": {result['message']}"
    emit(args, result, line)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from ctflows import landing

    checked = landing.check_data(_model(args), args.rev)
    emit(
        args,
        asdict(checked),
        f"{checked.model}: params load; {checked.path}@{checked.rev[:12]} (md5 {checked.md5}, "
        f"{checked.rows} rows) has every column params name; suite: {checked.summary}",
    )
    return EXIT_OK if checked.passed else EXIT_FAILED


def cmd_land(args: argparse.Namespace) -> int:
    from ctflows import landing

    model = _model(args)
    placed = landing.land_data(model, args.source)
    line = (
        f"{model.name}: landed {placed.path} at {placed.rev[:12]} (md5 {placed.md5}) "
        f"in {placed.repo}"
    )
    result: dict = {"rev": placed.rev, "md5": placed.md5, "path": placed.path, "outcome": None}
    if args.no_run:
        emit(args, result, line)
        return EXIT_OK
    webhook = args.webhook or landing.running_receiver(model)
    if webhook:
        answer = landing.announce(model, placed, webhook)
        result["webhook"] = answer
        flow_run_id = answer.get("flow_run_id")
        say = f"{line}\nwebhook {webhook}: {answer.get('status')} flow run {flow_run_id}"
        if not args.json:
            print(say, flush=True)
        if not flow_run_id or args.no_wait:
            emit(args, result, say)
            return EXIT_OK
        use_project_server(args.project)
        ok, followed = operate.follow_flow_run(model, str(flow_run_id), echo=not args.json)
        result["outcome"] = followed
        text = f"flow run {followed['flow_run_name']} ended {followed['state']}"
        if followed["decision"]:
            text += f": {status.decision_line(status.Decision(**followed['decision']))}"
        emit(args, result, text)
        return EXIT_OK if ok else EXIT_FAILED
    with project_server(args.project, "ctflows land"), classified(model.params()):
        ok, outcome = operate.run_local(model, placed.rev, False, False)
    if isinstance(outcome, BaseException):
        emit(args, result, line)
        return fail(args, exit_code(outcome), f"{type(outcome).__name__}: {outcome}")
    result["outcome"] = outcome
    if not ok:
        emit(args, result, line)
        return fail(args, EXIT_FAILED, str(outcome))
    emit(args, result, f"{line}\n{_outcome_text(outcome)}")
    return EXIT_OK


def _update(args: argparse.Namespace) -> int:
    from ctflows import landing

    model = _model(args)
    widened = landing.widen_suite(model, args.source, args.margin, write=not args.dry_run)
    verb = "would change" if args.dry_run else "changed"
    text = (
        f"{model.name}: {verb} {len(widened.changes)} expectations of {widened.suite_file}:\n"
        + "\n".join(f"  {c}" for c in widened.changes)
        if widened.changes
        else f"{model.name}: the suite already admits {args.source}; nothing to change"
    )
    emit(args, asdict(widened), text)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from ctflows import onboard

    if args.update:
        return _update(args)
    written = onboard.init_model(
        args.project,
        catalog.check_name(args.model),
        args.source,
        label=args.label,
        id_column=args.id_column,
        timestamp_column=args.timestamp_column,
        margin=args.margin,
        task=args.task,
        repo=args.repo,
        path=args.path,
        create_repo=args.create_repo,
    )
    lines = [
        f"wrote {written.params_file} and {written.suite_file} "
        f"({written.expectations} expectations over {written.columns} columns)",
        f"task {written.task} (label {args.label or 'guessed'}), estimator {written.estimator}",
        f"data: {written.data_path} in {written.data_repo} at {written.data_rev[:12]} "
        f"(md5 {written.data_md5}), pushed to its DVC remote",
        *(f"note: {n}" for n in written.notes),
    ]
    if written.kept:
        lines.append(
            f"kept the project's model {written.kept!r}: declared as "
            f"{MODELS_DIR}/{written.kept}/params.yaml (extends params.yaml)"
        )
    lines.append(f"review both, then `ctflows run {args.model} --local`")
    emit(args, asdict(written), "\n".join(lines))
    return EXIT_OK

"""Flow `continuous-training`: pull, validate, train, compare, promote, deploy, notify."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger

from tasks.champion import get_champion
from tasks.config import Params, load_params
from tasks.dask_engine import dask_run
from tasks.data import lineage_tags, pull_data, resolve_data
from tasks.decisions import RedecideRefused, decide, find_decision, mark_redecided, redecision
from tasks.deploy import check_deployment, deploy_model
from tasks.evaluate import (
    GateRejected,
    evaluate_candidate,
    log_report,
    start_plots,
    wait_for_plots,
    with_gate,
)
from tasks.gates.predict_memory import probe_scope, start_probe
from tasks.image import build_model_image, validate_model_image
from tasks.journal import recover_interrupted
from tasks.ledger import check_freeze
from tasks.notify import flow_run_link
from tasks.outcome import Kind, RunOutcome
from tasks.promote import (
    finish_promotion,
    promote_model,
    register_candidate,
    restore_champion,
)
from tasks.reports import GateReport
from tasks.services import (
    call_with_deadline,
    failure_text,
    install_redaction,
    outage_of,
    prefect_deadline,
)
from tasks.train import (
    code_version,
    complete_run,
    hold_training_lock,
    prepare_tracking,
    train_candidate,
)
from tasks.validate import validate_data


@flow(name="continuous-training")
def continuous_training(
    rev: str | None = None,
    path: str | None = None,
    repo: str | None = None,
    md5: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    params_file: str = "params.yaml",
    redecide: str | None = None,
) -> RunOutcome:
    """Retrain on one DVC data version and ship the candidate only if it passes the gates.

    Args:
        rev: git revision of the data repository (default: ``data.rev`` in params).
        path: DVC-tracked file to train on (default: ``data.path``).
        repo: git+DVC repository holding the data (default: ``data.repo``).
        md5: the DVC md5 the caller expects at ``rev`` (from a data-landed event); the run
            fails if the revision holds other data.
        dry_run: train and gate, but change neither the registry nor the cluster.
        force: retrain even if this data, params and code were already decided, and skip the
            no-regression and significance gates; data validation and all other gates apply.
        params_file: the params.yaml to use.
        redecide: who asks to decide again a rejection of this data, params and code that
            came only from gates measuring the machine (latency, predict_memory): it is not
            taken as final, and the new decision records who asked; refused for any other
            decision. Set by `ctflows run --redecide`.
    """
    params = load_params(params_file)
    install_redaction()  # no credentials in any log line, Prefect's own included
    with prefect_deadline(params.timeouts), hold_training_lock(params), dask_run(), probe_scope():
        return _continuous_training(params, rev, path, repo, md5, dry_run, force, redecide)


def _continuous_training(
    params: Params,
    rev: str | None,
    path: str | None,
    repo: str | None,
    md5: str | None,
    dry_run: bool,
    force: bool,
    redecide: str | None = None,
) -> RunOutcome:
    logger = get_run_logger()
    outcome = RunOutcome("failed", params.registry.model_name, flow_run=flow_run_link())
    step = "setup"
    plots = None
    try:
        experiment_id = prepare_tracking(params)
        step = "recover"
        recovered = recover_interrupted(params)
        if recovered:
            decide(
                RunOutcome(
                    "recovered", outcome.model_name, error=recovered, flow_run=outcome.flow_run
                ),
                params,
            )
        step = "pull"
        data_repo = repo or params.data.repo
        version = call_with_deadline(
            lambda: resolve_data(
                data_repo, path or params.data.path, rev or params.data.rev, md5, params.data
            ),
            params.timeouts.dvc,
            "DVC (git)",
            data_repo,
        )
        outcome = RunOutcome(
            outcome.kind, outcome.model_name, version.md5, flow_run=outcome.flow_run
        )
        lineage = {
            **lineage_tags(version),
            "ct.git_commit": code_version(),
            "ct.params_hash": params.params_hash(),
        }
        previous = None if dry_run or force else find_decision(experiment_id, lineage, params)
        redecided = None
        if previous is not None and redecide:
            redecided = redecision(previous, redecide)  # RedecideRefused: not a decision
            logger.warning("%s", redecided)
            previous = None
        if previous is not None:
            logger.info(
                "skipping: run %s already decided %s on this data, params and code",
                previous.run_id,
                previous.decision,
            )
            skipped = RunOutcome(
                "skipped",
                outcome.model_name,
                version.md5,
                previous.model_version,
                run_id=previous.run_id,
                flow_run=outcome.flow_run,
            )
            decide(skipped, params)
            return skipped
        pulled = version
        version = call_with_deadline(
            lambda: pull_data(pulled, params), params.timeouts.dvc, "DVC remote", pulled.repo
        )
        step = "validate"
        start_probe(params)  # the memory gate's fresh process imports on the core left idle
        for member in version.members():  # each version of the window against the contract
            validate_data(member, params)
        templates = {}
        if not dry_run:
            step = "check-deployment"
            templates = check_deployment(params)
        step = "train"
        trained = train_candidate(version, params, experiment_id, lineage, dry_run)
        step = "evaluate"
        champion = get_champion(params)
        report = evaluate_candidate(
            trained.pipeline,
            champion.model if champion else None,
            version,
            params,
            trained.run_id,
            force,
        )
        plots = start_plots(report, trained.run_id)  # drawn while we ship
        previous_version = champion.version if champion else None
        ended = Ended(outcome, version.md5, previous_version, trained.run_id, redecided, redecide)
        if report.decision == "reject" or dry_run:
            return end_without_promotion(ended, report, params, dry_run)
        step = "promote"
        freeze = check_freeze(params)
        if freeze is not None:  # gated, registered and built, not promoted; decided again later
            why = f"promotions frozen by {freeze.actor} since {freeze.at}: {freeze.reason}"
            step = "image"
            registered = register_candidate(trained, params, frozen=why)
            build_model_image(trained.model_uri, params.registry.model_name, registered, params)
            frozen = RunOutcome(
                "frozen",
                outcome.model_name,
                version.md5,
                registered,
                champion.version if champion else None,
                run_id=trained.run_id,
                flow_run=outcome.flow_run,
                error=f"{why}; registered as v{registered} (no alias): promote it by hand "
                "(`ctflows promote`) once the freeze is lifted",
            ).with_report(report)
            frozen = mark_redecided(frozen, redecided, redecide)
            decide(frozen, params)
            return frozen
        step = "image"  # built, pushed and found by digest before the alias moves
        registered = register_candidate(trained, params)
        image = build_model_image(trained.model_uri, params.registry.model_name, registered, params)
        step = "infra-validation"  # the image runs and answers before the alias moves
        infra = validate_model_image(image, trained.pipeline, version, params)
        if infra is not None:
            report = with_gate(report, infra)
            log_report(report, trained.run_id)
        if report.decision == "reject":  # the image did not run as it must
            return end_without_promotion(ended, report, params, dry_run=False)
        step = "promote"
        promotion = promote_model(trained, params, templates, registered)
        step = "deploy"
        try:
            deployed = deploy_model(promotion.identity, params)
        except Exception as exc:
            restore_champion(promotion, f"{type(exc).__name__}: {exc}", params)
            raise
        finish_promotion(promotion.model_name)
        complete_run(trained.run_id, champion.version if champion else None)
        result = RunOutcome(
            "promoted",
            outcome.model_name,
            version.md5,
            promotion.version,
            promotion.previous_version,
            trained.run_id,
            deploy=f"{image.summary()}; {deployed.summary()}",
            flow_run=outcome.flow_run,
        ).with_report(report)
        result = mark_redecided(result, redecided, redecide)
        decide(result, params)
        return result
    except (GateRejected, RedecideRefused):
        raise
    except Exception as exc:
        error = failure_text(exc, params)  # names the service that failed; no credentials
        logger.error("failed at step %s (md5=%s): %s", step, outcome.data_md5 or "-", error)
        decide(
            RunOutcome(
                "failed",
                outcome.model_name,
                outcome.data_md5,
                step=step,
                error=error,
                flow_run=outcome.flow_run,
            ),
            params,
        )
        outage = outage_of(exc, params)
        if outage is not None and outage is not exc:
            raise outage from exc
        raise
    finally:
        wait_for_plots(plots)  # the run ends with its report complete in MLflow


if __name__ == "__main__":
    continuous_training()


@dataclass(frozen=True)
class Ended:
    """What a run that ends before promotion records: whose run, on which data, against which
    champion, and whether it re-decides an earlier decision."""

    outcome: RunOutcome
    data_md5: str
    previous_version: str | None
    run_id: str
    redecided: str | None
    redecide: str | None


def end_without_promotion(
    ended: Ended, report: GateReport, params: Params, dry_run: bool
) -> RunOutcome:
    """A rejection (by the gates, or by the infrastructure validation) or a dry run: recorded
    and told; the run is marked complete unless it was a dry run."""
    kind: Kind = "rejected" if report.decision == "reject" else "dry-run"
    result = RunOutcome(
        kind,
        ended.outcome.model_name,
        ended.data_md5,
        ended.previous_version,
        run_id=ended.run_id,
        flow_run=ended.outcome.flow_run,
    ).with_report(report)
    result = mark_redecided(result, ended.redecided, ended.redecide)
    if not dry_run:
        complete_run(ended.run_id, ended.previous_version)
    decide(result, params)
    if kind == "rejected" and params.gates.fail_run_on_reject:
        raise GateRejected(report)
    return result

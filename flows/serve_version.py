"""What flows `rollback` and `promote` share: put a registered version in service, cluster
first, then the alias.

Journal the switch, roll the cluster out to the version's recorded image and wait for it, and
only then move `champion`. If anything fails, the cluster is put back as journaled (the alias
never moved) and Slack hears why; the error is raised again for the flow run to fail.
"""

from __future__ import annotations

from collections.abc import Callable

from tasks.cluster import PodTemplate
from tasks.config import Params
from tasks.decisions import decide
from tasks.deploy import DeployResult, check_deployment, deploy_model
from tasks.image import check_image
from tasks.journal import recover_interrupted
from tasks.notify import flow_run_link
from tasks.outcome import Kind, RunOutcome
from tasks.promote import RollbackPlan, begin_rollback, plan_rollback, switch_alias
from tasks.services import failure_text, prefect_deadline
from tasks.train import hold_training_lock, prepare_tracking


def serve_version(
    params: Params,
    version: str | None,
    step: str,
    actor: str = "",
    check: Callable[[], object] | None = None,
) -> tuple[RollbackPlan, DeployResult]:
    """Serve ``version`` (None: the one before the champion), after ``check()`` if given;
    a failure at ``step`` is notified and raised, with the cluster as it was."""
    with prefect_deadline(params.timeouts), hold_training_lock(params):
        prepare_tracking(params)
        recover_interrupted(params)
        plan = None
        try:
            if check is not None:
                check()
            plan = plan_rollback(params, version)
            check_image(plan.target.image, params)  # the recorded digest, before any change
            templates: dict[str, PodTemplate] = check_deployment(params)
            begin_rollback(params, plan, templates)
            deployed = deploy_model(plan.target, params)  # reverts the cluster if it fails
            switch_alias(params, plan)
        except Exception as exc:
            error = failure_text(exc, params)
            if plan is not None:  # the cluster back as journaled; the alias never moved
                try:
                    recover_interrupted(params)
                except Exception as incomplete:  # the journal stays open; say so as well
                    error += f"\n{failure_text(incomplete, params)}"
            failed = RunOutcome(
                "failed",
                params.registry.model_name,
                step=step,
                error=error,
                flow_run=flow_run_link(),
                actor=actor or None,
            )
            decide(failed, params)
            raise
    return plan, deployed


def served_outcome(
    kind: Kind,
    params: Params,
    plan: RollbackPlan,
    deployed: DeployResult,
    reason: str,
    actor: str,
) -> RunOutcome:
    """The outcome of a switch that succeeded, recorded and notified."""
    outcome = RunOutcome(
        kind,
        params.registry.model_name,
        plan.target.data_md5,
        plan.target.version,
        plan.current,
        plan.target.run_id,
        deploy=deployed.summary(),
        flow_run=flow_run_link(),
        error=reason or None,
        actor=actor or None,
    )
    decide(outcome, params)
    return outcome

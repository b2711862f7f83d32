"""Flow `promote`: make a version that passed its gates champion by hand, cluster first.

The same steps as `rollback` (journal, roll out and wait, then move the alias), for any
version the gates once accepted: the way back to a model after an incident, or forward to one
that was frozen out. Refused for a version never validated, and while promotions are frozen.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.config import load_params
from tasks.deploy import check_deployment, deploy_model
from tasks.image import check_image
from tasks.journal import recover_interrupted
from tasks.ledger import check_promotable
from tasks.notify import RunOutcome, flow_run_link, notify
from tasks.promote import begin_rollback, plan_rollback, switch_alias
from tasks.services import failure_text, install_redaction, prefect_deadline
from tasks.train import hold_training_lock, prepare_tracking


@flow(name="promote")
def promote(
    version: str, reason: str, actor: str = "", params_file: str = "params.yaml"
) -> RunOutcome:
    """Make ``version`` the champion in the cluster and then in the registry, saying why.

    Args:
        version: the registered model version to serve.
        reason: why, for Slack and the model's history (required).
        actor: who asked (the command line sends user@host).
        params_file: the model's params.yaml.
    """
    params = load_params(params_file)
    install_redaction()  # no credentials in any log line, Prefect's own included
    name = params.registry.model_name
    with prefect_deadline(params.timeouts), hold_training_lock(params):
        prepare_tracking(params)
        recover_interrupted(params)
        plan = None
        try:
            check_promotable(params, version)
            plan = plan_rollback(params, version)
            check_image(plan.target.image, params)  # the recorded digest, before any change
            begin_rollback(params, plan, check_deployment(params))
            deployed = deploy_model(plan.target, params)  # reverts the cluster if it fails
            switch_alias(params, plan)
        except Exception as exc:
            error = failure_text(exc, params)
            if plan is not None:  # the cluster back as journaled; the alias never moved
                try:
                    recover_interrupted(params)
                except Exception as incomplete:  # the journal stays open; say so as well
                    error += f"\n{failure_text(incomplete, params)}"
            notify(
                RunOutcome(
                    "failed",
                    name,
                    step="promote",
                    error=error,
                    flow_run=flow_run_link(),
                    actor=actor or None,
                ),
                params,
            )
            raise
    get_run_logger().warning(
        "%s promoted %s v%s (was v%s): %s", actor, name, version, plan.current, reason
    )
    outcome = RunOutcome(
        "promoted",
        name,
        plan.target.data_md5,
        plan.target.version,
        plan.current,
        plan.target.run_id,
        deploy=deployed.summary(),
        flow_run=flow_run_link(),
        error=reason,
        actor=actor or None,
    )
    notify(outcome, params)
    return outcome

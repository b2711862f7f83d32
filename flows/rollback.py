"""Flow `rollback`: put a previous model back in the registry and the cluster together."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.config import load_params
from tasks.deploy import check_deployment, deploy_model
from tasks.image import check_image
from tasks.journal import recover_interrupted
from tasks.notify import RunOutcome, flow_run_link, notify
from tasks.promote import begin_rollback, plan_rollback, switch_alias
from tasks.services import failure_text, install_redaction, prefect_deadline
from tasks.train import hold_training_lock, prepare_tracking


@flow(name="rollback")
def rollback(
    version: str | None = None,
    params_file: str = "params.yaml",
    reason: str = "",
    actor: str = "",
) -> RunOutcome:
    """Restore the previous champion, or ``version``, in the registry and in the cluster.

    ``reason`` and ``actor`` (who asked) go to Slack and the model's history.

    The cluster is rolled out first and waited for; only when the old image serves does the
    alias move. If that rollout fails, the cluster is put back and the alias stays.
    """
    logger = get_run_logger()
    params = load_params(params_file)
    install_redaction()  # no credentials in any log line, Prefect's own included
    name = params.registry.model_name
    with prefect_deadline(params.timeouts), hold_training_lock(params):
        prepare_tracking(params)
        recover_interrupted(params)
        plan = None
        try:
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
                    step="rollback",
                    error=error,
                    flow_run=flow_run_link(),
                ),
                params,
            )
            raise
    logger.warning("rolled %s back from v%s to v%s", name, plan.current, plan.target.version)
    outcome = RunOutcome(
        "rolled-back",
        name,
        plan.target.data_md5,
        plan.target.version,
        plan.current,
        plan.target.run_id,
        deploy=deployed.summary(),
        flow_run=flow_run_link(),
        error=reason or None,
        actor=actor or None,
    )
    notify(outcome, params)
    return outcome


if __name__ == "__main__":
    rollback()

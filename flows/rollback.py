"""Flow `rollback`: put a previous model back in the registry and the cluster together."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.config import load_params
from tasks.deploy import check_deployment, deploy_model
from tasks.notify import RunOutcome, notify
from tasks.promote import (
    begin_rollback,
    plan_rollback,
    recover_interrupted,
    switch_alias,
)
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
    name = params.registry.model_name
    with hold_training_lock(params):
        prepare_tracking(params)
        recover_interrupted(params)
        plan = None
        try:
            plan = plan_rollback(params, version)
            begin_rollback(params, plan, check_deployment(params))
            deployed = deploy_model(plan.target, params)  # reverts the cluster if it fails
            switch_alias(params, plan)
        except Exception as exc:
            if plan is not None:  # the cluster back as journaled; the alias never moved
                recover_interrupted(params)
            notify(
                RunOutcome(
                    "failed",
                    name,
                    step="rollback",
                    error=f"{type(exc).__name__}: {exc}",
                    flow_run=flow_run.ui_url,
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
        flow_run=flow_run.ui_url,
        error=reason or None,
        actor=actor or None,
    )
    notify(outcome, params)
    return outcome


if __name__ == "__main__":
    rollback()

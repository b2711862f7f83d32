"""Flow `rollback`: put a previous model back in the registry and the cluster together."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.serve_version import serve_version, served_outcome
from tasks.config import load_params
from tasks.outcome import RunOutcome
from tasks.services import install_redaction


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
    params = load_params(params_file)
    install_redaction()  # no credentials in any log line, Prefect's own included
    plan, deployed = serve_version(params, version, "rollback", actor)
    get_run_logger().warning(
        "rolled %s back from v%s to v%s",
        params.registry.model_name,
        plan.current,
        plan.target.version,
    )
    return served_outcome("rolled-back", params, plan, deployed, reason, actor)


if __name__ == "__main__":
    rollback()

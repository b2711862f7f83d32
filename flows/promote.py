"""Flow `promote`: make a version that passed its gates champion by hand, cluster first.

The same steps as `rollback` (journal, roll out and wait, then move the alias), for any
version the gates once accepted: the way back to a model after an incident, or forward to one
that was frozen out. Refused for a version never validated, and while promotions are frozen.
"""

from __future__ import annotations

from functools import partial

from prefect import flow, get_run_logger

from flows.serve_version import serve_version, served_outcome
from tasks.config import load_params
from tasks.ledger import check_promotable
from tasks.outcome import RunOutcome
from tasks.services import install_redaction


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
    check = partial(check_promotable, params, version)  # validated once, and not frozen now
    plan, deployed = serve_version(params, version, "promote", actor, check)
    get_run_logger().warning(
        "%s promoted %s v%s (was v%s): %s",
        actor,
        params.registry.model_name,
        version,
        plan.current,
        reason,
    )
    return served_outcome("promoted", params, plan, deployed, reason, actor)

"""Decisions are remembered for the right reasons: a rejection against the champion it was
compared with, an automatic rollback as the decision for that data, params and code."""

from __future__ import annotations

import pytest

from tasks.cluster import RolloutFailed
from tests.integration.test_continuous_training import champion_version
from tests.integration.test_deploy_cluster import (  # noqa: F401
    apps,
    image,
    kube,
    never_ready,
    version_image,
)


def test_a_rejection_holds_only_against_the_champion_it_was_compared_with(workspace):
    ws = workspace
    day1 = ws.land_day(1, 3_000)
    assert ws.run(day1).version == "1"
    ws.params_file.write_text(ws.params_file.read_text().replace("seed: 42", "seed: 43"))
    rejected = ws.run(day1)
    assert rejected.kind == "rejected"
    again = ws.run(day1)
    assert again.kind == "skipped" and again.run_id == rejected.run_id  # same champion: held

    promoted = ws.run(ws.land_day(2, 24_000))
    assert promoted.kind == "promoted" and champion_version(ws) == "2", promoted.line()
    decided = ws.run(day1)  # another champion now: the same data is decided again
    assert decided.kind != "skipped", decided.line()
    assert decided.run_id != rejected.run_id


def test_an_automatic_rollback_is_the_decision_until_forced(workspace, kube):  # noqa: F811
    ws = workspace
    ws.run(ws.land_day(1, 3_000))
    apps(kube).patch_namespaced_deployment(
        "churn-model", "ctflows", {"spec": {"progressDeadlineSeconds": 1}}
    )
    never_ready(kube, "2")  # v2's pods never become ready: rolled back automatically
    day2 = ws.land_day(2, 24_000)
    with pytest.raises(RolloutFailed):
        ws.run(day2)
    assert champion_version(ws) == "1"
    assert image(kube) == version_image(ws, "1")

    apps(kube).patch_namespaced_deployment(
        "churn-model", "ctflows", {"spec": {"progressDeadlineSeconds": 600}}
    )
    again = ws.run(day2)  # the next trigger on the same data
    assert again.kind == "skipped", again.line()
    assert champion_version(ws) == "1" and image(kube) == version_image(ws, "1")
    assert "rolled" in ws.slack.texts()[-1] or "already" in ws.slack.texts()[-1]

    forced = ws.run(day2, force=True)  # someone forces it: decided anew (v3 is healthy)
    assert forced.kind == "promoted" and champion_version(ws) == forced.version

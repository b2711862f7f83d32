from ctflows.status import Status, render


def test_status_reads_at_a_glance():
    status = Status(
        "churn",
        "churn",
        "params.yaml",
        champion={
            "version": "2",
            "run_id": "r2",
            "data_md5": "f" * 32,
            "image": {"ct.image_digest": "sha256:abc"},
            "promoted_at": "2026-11-24T05:00:00+00:00",
            "promoted_by": "flow",
            "how": "promoted",
            "why": "all gates passed",
        },
        cluster={
            "mode": "cluster",
            "deployment": "ctflows/churn-model",
            "image": "reg/churn@sha256:def",
            "model_version": "1",
            "matches_champion": False,
        },
        journal={
            "version": "2",
            "previous_version": "1",
            "deployments": ["churn-model"],
            "note": "x",
        },
        frozen={"reason": "incident 42", "actor": "oncall", "at": "t"},
        unavailable={"prefect": "no Prefect server configured"},
    )
    text = render(status)
    assert "champion    v2  run r2" in text and "all gates passed" in text
    assert "ct.image_digest = sha256:abc" in text
    assert "(model v1): DOES NOT MATCH the champion" in text
    assert "journal     OPEN: move to v2 from v1" in text
    assert "FROZEN by oncall since t: incident 42" in text
    assert "!! prefect not read" in text

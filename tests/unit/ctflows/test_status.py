import json

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


def test_status_json_holds_no_credentials_of_the_tracking_uri(tmp_path, monkeypatch, capsys):
    """MLflow's client sends the user:token@ of MLFLOW_TRACKING_URI; status prints links to
    the MLflow UI (and the reason MLflow was not read) without them."""
    import socket

    from ctflows.cli import main
    from tests.helpers import write_params

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    write_params(tmp_path, timeouts={"mlflow": 1, "mlflow_retries": 0})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://ci:p@ss-t0ken@127.0.0.1:{port}/mlflow")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    main(["status", "--json", "--project", str(tmp_path), "churn-classifier"])
    out = capsys.readouterr().out
    assert "t0ken" not in out and "ci:" not in out
    payload = json.loads(out)
    assert payload["links"]["mlflow"].startswith(f"https://127.0.0.1:{port}/mlflow/#/models/")

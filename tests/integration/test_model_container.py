"""What ships, run as it ships: the model image promoted on the serving base built from
deployments/serving/Dockerfile is pulled by the digest its MLflow version records and run as a
container (podman + runc), checked from outside; and the infrastructure gate that does the same
before the alias moves."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
import yaml

from tasks.containers import Podman
from tasks.data import make_batch, split_holdout
from tasks.registry import Reference, Registry
from tasks.train import tracking_uri
from tests.helpers import ROOT, store, wait_for
from tests.oci_registry import free_port, skopeo_inspect

K8S = ROOT / "deployments" / "k8s" / "deployment.yaml"


def configure(ws, image: dict, **infra) -> None:
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["image"] = {**raw.get("image", {}), **image}
    raw.setdefault("gates", {})["infra_validation"] = {"runtime": "podman", **infra}
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def manifest_log_location() -> tuple[str, str]:
    """Where deployments/k8s/deployment.yaml puts the inference log: (env value, mount path)."""
    deployment = next(yaml.safe_load_all(K8S.read_text()))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    url = next(e["value"] for e in container["env"] if e["name"] == "CTFLOWS_INFERENCE_LOG_URL")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "inference-log")
    return url, mount["mountPath"]


def gate_report(mlflow, run_id: str, folder) -> dict:
    path = mlflow.download_artifacts(run_id, "gates/report.json", str(folder))
    with open(path) as fh:
        return dict(json.load(fh))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, f"{type(exc).__name__}: {exc}"


def test_promoted_image_runs_as_a_container_and_answers_as_the_registered_model(
    workspace, oci_registry, serving_base, tmp_path
):
    ws = workspace
    configure(ws, {"repository": f"{oci_registry}/churn-model", "base": serving_base})
    outcome = ws.run(ws.land_day(1, 3_000))
    assert outcome.kind == "promoted", outcome
    mlflow = store(ws.params)
    tags = mlflow.get_model_version("churn-classifier", outcome.version).tags
    digest, image = tags["ct.image_digest"], tags["ct.image"]
    assert image == f"{oci_registry}/churn-model@{digest}"
    report = gate_report(mlflow, outcome.run_id, tmp_path)
    infra = next(g for g in report["gates"] if g["name"] == "infra_validation")
    assert infra["status"] == "passed" and digest in infra["reason"], infra

    # skopeo agrees with what the flow reports: digest, the base's layers + the model layer
    seen = skopeo_inspect(image)
    base = skopeo_inspect(serving_base)
    assert seen["Digest"] == digest
    assert seen["Layers"][:-1] == base["Layers"] and len(seen["Layers"]) == len(base["Layers"]) + 1
    assert seen["Labels"]["ctflows.io/model-version"] == outcome.version
    assert seen["Labels"]["org.opencontainers.image.base.digest"] == serving_base.split("@")[1]

    # run it as a pod would: pulled by digest, the manifest's log location on a volume
    podman = Podman()
    podman.pull(image, insecure=True)
    log_url, mount = manifest_log_location()
    assert log_url == mount
    volume = tmp_path / "inference-log"
    volume.mkdir(mode=0o777)
    volume.chmod(0o777)  # as an emptyDir: writable by the image's uid 10001
    name = f"ctflows-test-{uuid.uuid4().hex[:8]}"
    running = podman.start(
        image,
        name,
        free_port(),
        env={  # what the manifest's Downward API gives from the annotations ctflows writes
            "MODEL_NAME": "churn-classifier",
            "MODEL_VERSION": outcome.version,
            "IMAGE_DIGEST": digest,
            "CTFLOWS_INFERENCE_LOG_URL": log_url,
            "CTFLOWS_INFERENCE_LOG_FLUSH_SECONDS": "3600",  # buffered until SIGTERM
            "CTFLOWS_INFERENCE_LOG_FLUSH_ROWS": "10000",  # at most the buffer (checked at start)
        },
        volumes=[f"{volume}:{mount}"],
        memory_bytes=1 << 30,
    )
    try:
        wait_for(
            lambda: get(f"{running.url}/ready")[0] == 200 or not podman.state(name)["Running"],
            180,
            "the container to become ready",
        )
        assert get(f"{running.url}/ready")[0] == 200, podman.logs(name)[-3000:]
        features = ws.params.data.features
        rows = split_holdout(make_batch(1, 3_000), ws.params.data)[1][features].head(60)
        body = json.dumps({"records": json.loads(rows.to_json(orient="records"))}).encode()
        for _ in range(2):
            request = urllib.request.Request(
                f"{running.url}/predict", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as resp:
                served = json.loads(resp.read())["scores"]
        status, model = get(f"{running.url}/model")
        assert status == 200
        assert json.loads(model)["model_version"] == outcome.version
        assert json.loads(model)["image_digest"] == digest
        metrics = get(f"{running.url}/metrics")[1]
        assert any(
            line.startswith('ctflows_predict_requests_total{status="200"}')
            and line.rstrip().endswith(" 2.0")
            for line in metrics.splitlines()
        ), metrics
        assert not list(volume.rglob("*.parquet"))  # still buffered in the server
        podman.stop(name, 30)  # SIGTERM, as a pod's termination
        assert podman.state(name)["ExitCode"] == 0, podman.logs(name)[-3000:]
    finally:
        logs = podman.logs(name)
        podman.remove(name)
        podman.remove_image(image)
    import mlflow as ml
    import pandas as pd

    ml.set_tracking_uri(tracking_uri(ws.params))
    candidate = ml.sklearn.load_model(f"models:/churn-classifier/{outcome.version}")
    assert served == [float(s) for s in candidate.predict_proba(rows)[:, 1]]
    files = list(volume.rglob("*.parquet"))
    assert files, logs[-3000:]
    logged = pd.concat(pd.read_parquet(f) for f in files)
    assert len(logged) == 2 * len(rows)
    assert set(logged["model_version"].astype(str)) == {outcome.version}
    assert set(logged["image_digest"]) == {digest}


def test_infra_gate_rejects_an_image_killed_for_memory_and_moves_nothing(
    workspace, oci_registry, serving_base, tmp_path
):
    ws = workspace
    configure(
        ws,
        {"repository": f"{oci_registry}/churn-tight", "base": serving_base},
        memory_limit_bytes=1 << 26,  # 64 MiB: Python with pandas and scikit-learn cannot start
    )
    outcome = ws.run(ws.land_day(1, 3_000))
    assert outcome.kind == "rejected", outcome
    failed = "; ".join(outcome.failed_gates)
    assert "infra_validation: the container was killed for memory (exit 137)" in failed, failed
    assert "over its memory limit of 64 MiB" in failed and "container log tail" in failed
    mlflow = store(ws.params)
    with pytest.raises(Exception, match="alias"):
        mlflow.get_model_version_by_alias("churn-classifier", "champion")
    assert not (ws.params.state_dir / "deploy" / "dry-run.jsonl").exists()
    slack = json.dumps(ws.slack.messages)
    assert "rejected" in slack and "over its memory limit of 64 MiB" in slack
    report = gate_report(mlflow, outcome.run_id, tmp_path)
    assert report["decision"] == "reject"
    # the image was pushed (the gate ran it from the registry), but nothing points at it
    ref = Reference.parse(f"{oci_registry}/churn-tight:churn-classifier-v1")
    assert Registry(oci_registry, ws.params.image).manifest(ref) is not None

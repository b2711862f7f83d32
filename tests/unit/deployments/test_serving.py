"""The serving app in-process, and the manifests and Dockerfile it ships with."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from deployments.serving.app import create_app
from tasks.data import make_batch
from tasks.train import train_model
from tests.helpers import ROOT, small_params

K8S = ROOT / "deployments" / "k8s"
SERVING = ROOT / "deployments" / "serving"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import mlflow
    from mlflow.models import infer_signature

    params = small_params(tmp_path_factory.mktemp("serving"))
    batch = make_batch(1, 3_000)
    model = train_model(batch, params)
    sample = batch[params.data.features].head(50)
    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(sample, model.predict_proba(sample)[:, 1]),
        pip_requirements=["scikit-learn"],
        serialization_format="cloudpickle",
    )
    return str(path), model, params


def test_ready_only_after_a_probe_prediction_and_predict_matches(saved_model):
    uri, model, params = saved_model
    client = TestClient(create_app(uri, load_in_background=False))
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json()["status"] == "ready"
    rows = make_batch(2, 5)
    records = rows[params.data.features].to_dict(orient="records")
    got = client.post("/predict", json={"records": records}).json()["scores"]
    np.testing.assert_allclose(got, model.predict_proba(rows)[:, 1])


def test_not_ready_until_loaded_and_says_why(tmp_path, saved_model):
    app = create_app(str(tmp_path / "missing"), load_in_background=False)
    client = TestClient(app)
    answer = client.get("/ready")
    assert answer.status_code == 503 and answer.json()["reason"]
    assert client.post("/predict", json={"records": [{}]}).status_code == 503
    pending = create_app(saved_model[0], load_in_background=True)
    assert pending.state.holder.error in {"loading", None}


def test_predict_names_missing_features(saved_model):
    client = TestClient(create_app(saved_model[0], load_in_background=False))
    answer = client.post("/predict", json={"records": [{"age": 30}]})
    assert answer.status_code == 422 and "tenure_months" in answer.json()["detail"]


def manifests():
    return [doc for f in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text())]


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifests_validate_against_the_kubernetes_schemas(doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, "1.31", strict=True)


def test_rbac_allows_only_reading_and_patching_the_named_deployments():
    role = next(d for d in manifests() if d["kind"] == "Role")
    deployments = {d["metadata"]["name"] for d in manifests() if d["kind"] == "Deployment"}
    (rule,) = role["rules"]
    assert set(rule["verbs"]) == {"get", "list", "watch", "patch"}
    assert rule["resources"] == ["deployments"] and set(rule["resourceNames"]) == deployments


def test_deployment_probes_and_ports_match_the_app_and_dockerfile():
    dockerfile = (SERVING / "Dockerfile").read_text()
    port = int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1))
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M), "the image must not run as root"
    assert "/ready" in dockerfile
    for dep in (d for d in manifests() if d["kind"] == "Deployment"):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["ports"][0]["containerPort"] == port
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_serving_requirements_are_pinned_as_in_the_lock():
    lock = dict(
        line.split("==")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for line in (SERVING / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            assert lock[name] == version, name


@pytest.mark.parametrize("path", ["deployment.yaml", "modelcar/deployment.yaml"])
def test_model_endpoint_tells_the_identity_the_flow_annotated(saved_model, monkeypatch, path):
    """The manifests hand the pod's ctflows.io annotations to the app (Downward API), so
    GET /model names the model a pod serves instead of nulls."""
    from tasks.deploy import ModelIdentity

    digest = "sha256:" + "b" * 64
    identity = ModelIdentity(
        "churn", "7", "run7", "f" * 32, f"r.example/m@{digest}", digest, "serving"
    )
    notes = identity.annotations()
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        if doc.get("kind") != "Deployment":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        for var in container.get("env", []):
            field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
            match = re.fullmatch(r"metadata\.annotations\['(.+)'\]", field)
            if match:  # what the kubelet does with a Downward API annotation reference
                monkeypatch.setenv(var["name"], notes.get(match[1], ""))
    client = TestClient(create_app(saved_model[0], load_in_background=False))
    answer = client.get("/model").json()
    assert answer["model_name"] == "churn" and answer["model_version"] == "7"
    assert answer["mlflow_run_id"] == "run7" and answer["data_md5"] == "f" * 32
    assert answer["image_digest"] == digest


def test_the_model_loads_from_its_directory_alone_without_a_tracking_store(
    saved_model, tmp_path, monkeypatch
):
    """A pod has no tracking store: a logged model's MLmodel carries a model_id, which
    mlflow.models.get_model_info would look up in one (UnsupportedModelRegistryStoreURI)."""
    import shutil

    from tasks.image_build import check_servable

    uri, _, params = saved_model
    logged = tmp_path / "logged"
    shutil.copytree(uri, logged)
    mlmodel = yaml.safe_load((logged / "MLmodel").read_text())
    (logged / "MLmodel").write_text(yaml.safe_dump({**mlmodel, "model_id": "m-0123456789abcdef"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unsupported-store://nowhere")  # as in a pod
    client = TestClient(create_app(str(logged), load_in_background=False))
    assert client.get("/ready").status_code == 200, client.get("/ready").json()
    assert client.get("/model").json()["features"] == list(params.data.features)
    check_servable(logged)  # the flow's check before the build, the same way

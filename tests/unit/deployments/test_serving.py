"""The serving app in-process, and the manifests and Dockerfile it ships with."""

from __future__ import annotations

import json
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


def good_records(params, n=3, seed=7):
    return make_batch(seed, n)[params.data.features].to_dict(orient="records")


@pytest.fixture(scope="module")
def client(saved_model):
    from deployments.serving.inference_log import LogConfig

    app = create_app(saved_model[0], load_in_background=False, log_config=LogConfig(enabled=False))
    return TestClient(app)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenure_months", "abc"),
        ("tenure_months", {}),
        ("tenure_months", [1, 2]),
        ("tenure_months", True),
        ("monthly_charges", "12.5"),
        ("contract", 3),
        ("contract", {"kind": "monthly"}),
    ],
)
def test_a_value_of_the_wrong_type_is_422_naming_the_record_and_field(
    saved_model, client, field, value
):
    records = good_records(saved_model[2])
    records[1] = {**records[1], field: value}
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert [(p["record"], p["field"]) for p in body["problems"]] == [(1, field)]
    assert f"record 1 field '{field}'" in body["detail"]


def test_null_is_scored_as_missing_and_an_unseen_category_is_accepted(saved_model, client):
    records = good_records(saved_model[2], 2)
    records[0]["monthly_charges"] = None
    records[1]["contract"] = "a contract never seen in training"
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 200, answer.text
    assert all(0.0 <= s <= 1.0 for s in answer.json()["scores"])


def test_a_feature_missing_from_one_record_of_a_batch_is_422_naming_it(saved_model, client):
    records = good_records(saved_model[2], 4)
    del records[1]["age"]
    del records[3]["contract"], records[3]["region"]
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 422, answer.text
    problems = {p["record"]: p["problem"] for p in answer.json()["problems"]}
    assert problems == {1: "lacks features ['age']", 3: "lacks features ['contract', 'region']"}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("field", ["monthly_charges", "customer_id"])
def test_non_finite_numbers_are_refused_not_scored_as_null(saved_model, client, literal, field):
    records = good_records(saved_model[2], 2)
    records[1][field] = "__value__"
    text = json.dumps({"records": records}).replace('"__value__"', literal)
    answer = client.post("/predict", content=text, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert any(
        p["field"] == field and "non-finite" in p["problem"] for p in answer.json()["problems"]
    )


def test_metrics_count_every_answered_request_by_status(saved_model):
    from deployments.serving.inference_log import LogConfig
    from deployments.serving.settings import RequestLimits

    app = create_app(
        saved_model[0],
        load_in_background=False,
        log_config=LogConfig(enabled=False),
        limits=RequestLimits(max_body_bytes=4096, max_inflight_bytes=8192),
    )
    client = TestClient(app)
    good = {"records": good_records(saved_model[2], 1)}
    sent = {"200": 0, "422": 0, "413": 0, "405": 0, "400": 0}
    for i in range(30):
        kind = i % 6
        if kind == 0:
            answer = client.post("/predict", json=good)
        elif kind == 1:
            answer = client.post("/predict", content=b"{not json")
        elif kind == 2:
            answer = client.post("/predict", json={"rows": []})
        elif kind == 3:
            answer = client.post("/predict", content=b'{"records": [' + b" " * 5000 + b"]}")
        elif kind == 4:
            answer = client.get("/predict")
        else:
            answer = client.post("/predict", json=good, headers={"X-Request-ID": "x" * 300})
        sent[str(answer.status_code)] += 1
    assert sent == {"200": 5, "422": 10, "413": 5, "405": 5, "400": 5}
    text = client.get("/metrics").text
    for status, count in sent.items():
        assert f'ctflows_predict_requests_total{{status="{status}"}} {float(count)}' in text
    assert "ctflows_predict_latency_seconds_count 30.0" in text


def test_a_body_past_the_configured_maximum_is_413(saved_model):
    from deployments.serving.inference_log import LogConfig
    from deployments.serving.settings import RequestLimits

    limits = RequestLimits(max_body_bytes=2048, max_inflight_bytes=2048)
    app = create_app(saved_model[0], False, LogConfig(enabled=False), limits=limits)
    client = TestClient(app)
    records = good_records(saved_model[2], 20)
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 413 and "CTFLOWS_SERVING_MAX_BODY_BYTES" in answer.json()["detail"]
    chunked = client.post("/predict", content=iter([json.dumps({"records": records}).encode()]))
    assert chunked.status_code == 413
    assert client.post("/predict", json={"records": records[:1]}).status_code == 200


def test_requests_wait_for_room_in_the_byte_budget_and_go_in_turn():
    import asyncio

    from deployments.serving.app import ByteBudget

    async def scenario():
        budget, order = ByteBudget(100), []

        async def request(name, size, release):
            async with budget.hold(size):
                order.append(name)
                await release.wait()

        first, second = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(request("a", 80, first))
        b = asyncio.create_task(request("b", 50, second))
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == ["a"] and budget.used == 80  # b waits: 80 + 50 > 100
        first.set()
        await a
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == ["a", "b"] and budget.used == 50
        second.set()
        await b
        assert budget.used == 0

    asyncio.run(scenario())


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

"""The Kubernetes worker's manifests: valid, least privilege, the same flow image as params."""

from __future__ import annotations

import yaml

from tasks.config import load_params
from tests.helpers import ROOT

WORKER = ROOT / "deployments" / "flow" / "worker.yaml"


def test_worker_manifests_are_valid_kubernetes():
    import kubernetes_validate

    docs = list(yaml.safe_load_all(WORKER.read_text()))
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding", "Deployment"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31", strict=True)


def test_worker_may_run_jobs_but_not_read_secrets_or_touch_deployments():
    role = next(d for d in yaml.safe_load_all(WORKER.read_text()) if d["kind"] == "Role")
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert ("batch", "jobs") in granted
    assert not any(r in {"secrets", "deployments"} for _, r in granted)


def test_worker_runs_the_flow_image_and_pool_of_params():
    params = load_params(ROOT / "params.yaml")
    deployment = next(
        d for d in yaml.safe_load_all(WORKER.read_text()) if d["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == params.workpool.image
    assert container["args"][container["args"].index("--pool") + 1] == params.workpool.name

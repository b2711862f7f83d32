"""Deploy through the real kubernetes client against the Kubernetes API stand-in."""

from __future__ import annotations

import json
import urllib.request

import pytest
from kubernetes import client, config

from tasks.deploy import DeployError
from tests.integration.test_continuous_training import champion_version
from tests.kube_standin import Standin


@pytest.fixture
def kube(tmp_path, workspace):
    with Standin(tmp_path / "kubeconfig") as standin:
        workspace.params_file.write_text(
            workspace.params_file.read_text()
            .replace("target: dry-run", "target: cluster")
            .replace("kubeconfig: null", f"kubeconfig: {standin.kubeconfig}")
        )
        yield standin


def deployment(kube):
    api = client.AppsV1Api(config.new_client_from_config(config_file=str(kube.kubeconfig)))
    return api.read_namespaced_deployment("churn-model", "ctflows")


def inject(kube, **fault):
    req = urllib.request.Request(
        f"{kube.url}/standin/faults",
        data=json.dumps(fault).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req).close()


def test_promotion_patches_image_and_annotations(workspace, kube):
    outcome = workspace.run(workspace.land_day(1, 3_000))
    assert outcome.kind == "promoted"
    dep = deployment(kube)
    image = dep.spec.template.spec.containers[0].image
    assert image == "registry.local/churn-model:churn-classifier-v1"
    notes = dep.spec.template.metadata.annotations
    assert notes["ctflows.io/model-version"] == "1"
    assert notes["ctflows.io/mlflow-run-id"] == outcome.run_id
    assert notes["ctflows.io/data-md5"] == outcome.data_md5
    assert "now runs registry.local/churn-model:churn-classifier-v1" in outcome.deploy
    assert dep.metadata.generation == 2


def test_wrong_container_fails_before_anything_changes(workspace, kube):
    workspace.params_file.write_text(
        workspace.params_file.read_text().replace("container: model", "container: server")
    )
    with pytest.raises(DeployError, match="no container 'server'"):
        workspace.run(workspace.land_day(1, 3_000))
    assert champion_version(workspace) is None
    assert deployment(kube).metadata.generation == 1
    assert "failed at check-deployment" in workspace.slack.texts()[-1]


def test_forbidden_is_named_and_alias_untouched(workspace, kube):
    inject(kube, method="GET", path="/deployments/churn-model", status=403, count=10)
    with pytest.raises(DeployError, match="403"):
        workspace.run(workspace.land_day(1, 3_000))
    assert champion_version(workspace) is None


def test_failed_patch_restores_the_champion_alias(workspace, kube):
    first = workspace.run(workspace.land_day(1, 3_000))
    assert champion_version(workspace) == first.version
    inject(kube, method="PATCH", status=500, count=10)
    with pytest.raises(DeployError, match="500"):
        workspace.run(workspace.land_day(2, 24_000))
    assert champion_version(workspace) == first.version
    assert deployment(kube).spec.template.spec.containers[0].image.endswith("-v1")
    assert "failed at deploy" in workspace.slack.texts()[-1]

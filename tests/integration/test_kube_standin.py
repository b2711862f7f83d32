"""The real kubectl agrees with the Kubernetes API stand-in the other tests run against."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube_standin import Standin

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
def kube(tmp_path):
    with Standin(tmp_path / "kubeconfig", ready_delay=0.3) as standin:
        yield standin


def kubectl(kube, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(kube.kubeconfig), "-n", "ctflows", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_get_lists_the_manifest_deployments(kube):
    out = kubectl(kube, "get", "deployments", "-o", "name")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == {
        "deployment.apps/churn-model",
        "deployment.apps/churn-model-canary",
    }
    image = kubectl(
        kube,
        "get",
        "deploy",
        "churn-model",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    )
    assert image.stdout == "registry.example.com/team/churn-model@sha256:" + "0" * 64


def test_set_image_then_rollout_status_succeeds(kube):
    out = kubectl(kube, "set", "image", "deployment/churn-model", "model=reg/m:v2")
    assert out.returncode == 0, out.stderr
    status = kubectl(kube, "rollout", "status", "deployment/churn-model", "--timeout=30s")
    assert status.returncode == 0, status.stderr
    assert "successfully rolled out" in status.stdout
    generation = kubectl(
        kube,
        "get",
        "deploy",
        "churn-model",
        "-o",
        "jsonpath={.metadata.generation}/{.status.observedGeneration}",
    )
    assert generation.stdout == "2/2"


@pytest.mark.parametrize(
    ("kind", "patch"),
    [
        (
            "strategic",
            '{"spec":{"template":{"spec":{"containers":[{"name":"model","image":"r/m:s"}]}}}}',
        ),
        ("merge", '{"metadata":{"annotations":{"team":"ml"}}}'),
        ("json", '[{"op":"replace","path":"/spec/replicas","value":3}]'),
    ],
)
def test_patch_types(kube, kind, patch):
    out = kubectl(kube, "patch", "deployment", "churn-model", "--type", kind, "-p", patch)
    assert out.returncode == 0, out.stderr
    got = kubectl(
        kube,
        "get",
        "deploy",
        "churn-model",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} "
        "{.metadata.annotations.team} {.spec.replicas}",
    ).stdout.split()
    expected = {"strategic": "r/m:s", "merge": "ml", "json": "3"}[kind]
    assert expected in got


def test_rollout_status_reports_the_progress_deadline(kube):
    kubectl(
        kube, "patch", "deployment", "churn-model", "-p", '{"spec":{"progressDeadlineSeconds":1}}'
    )
    kubectl(kube, "set", "image", "deployment/churn-model", "model=reg/m:v3-unready")
    status = kubectl(kube, "rollout", "status", "deployment/churn-model", "--timeout=60s")
    assert status.returncode != 0
    assert "exceeded its progress deadline" in status.stderr


@pytest.mark.skipif(
    not (os.environ.get("CTFLOWS_K8S_E2E") == "1" and os.environ.get("KUBECONFIG")),
    reason="opt-in: set KUBECONFIG to a real cluster and CTFLOWS_K8S_E2E=1",
)
def test_against_a_real_cluster():
    """The same reads the flow makes, against a real cluster with deployments/k8s applied."""
    from kubernetes import client, config

    api = client.AppsV1Api(config.new_client_from_config())
    dep = api.read_namespaced_deployment("churn-model", "ctflows")
    assert {c.name for c in dep.spec.template.spec.containers} == {"model"}

"""Deploy, wait, roll back and recover through the real kubernetes client, against the
Kubernetes API stand-in (tests/kube_standin.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kubernetes import client, config

from tasks.cluster import DeployError, RolloutFailed
from tests.helpers import ROOT, store
from tests.integration.test_continuous_training import champion_version
from tests.kube_standin import Standin


def configure(ws, standin, **deploy) -> None:
    import yaml

    raw = yaml.safe_load(ws.params_file.read_text())
    settings = {
        "target": "cluster",
        "kubeconfig": str(standin.kubeconfig),
        "poll_seconds": 0.1,
        "api_retries": 2,
        "rollout_timeout_seconds": 20,
    }
    raw["deploy"].update({**settings, **deploy})
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


@contextmanager
def standin_with_registry(tmp_path, ws, oci_registry: str, serving_base: str) -> Iterator[Standin]:
    """The API stand-in pulling from the test registry; the flow pushes its images there."""
    import yaml

    raw = yaml.safe_load(ws.params_file.read_text())
    raw["image"] = {"repository": f"{oci_registry}/churn-model", "base": serving_base}
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with Standin(tmp_path / "kubeconfig", ready_delay=0.3, registry=oci_registry) as standin:
        configure(ws, standin)
        yield standin


@pytest.fixture
def kube(tmp_path, workspace, oci_registry, serving_base):
    with standin_with_registry(tmp_path, workspace, oci_registry, serving_base) as standin:
        yield standin


def version_image(ws, version: str) -> str:
    """The by-digest image the flow recorded on the MLflow version."""
    mlflow = store(ws.params)
    return mlflow.get_model_version("churn-classifier", version).tags["ct.image"]


def never_ready(kube, version: str) -> None:
    """Pods of this model version never become ready (a model that crashes at start)."""
    req = urllib.request.Request(
        f"{kube.url}/standin/unready",
        data=json.dumps({"match": f"ctflows.io/model-version={version}"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req).close()


def apps(kube):
    return client.AppsV1Api(config.new_client_from_config(config_file=str(kube.kubeconfig)))


def deployment(kube, name="churn-model"):
    return apps(kube).read_namespaced_deployment(name, "ctflows")


def image(kube, name="churn-model") -> str:
    return deployment(kube, name).spec.template.spec.containers[0].image


def inject(kube, **fault):
    req = urllib.request.Request(
        f"{kube.url}/standin/faults",
        data=json.dumps(fault).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req).close()


def requests_seen(kube) -> list[dict]:
    with urllib.request.urlopen(f"{kube.url}/standin/requests") as resp:
        return json.loads(resp.read())["requests"]


def test_promotion_rolls_out_and_waits_until_available(workspace, kube):
    outcome = workspace.run(workspace.land_day(1, 3_000))
    assert outcome.kind == "promoted"
    dep = deployment(kube)
    pushed = version_image(workspace, "1")
    assert image(kube) == pushed and "@sha256:" in pushed  # by digest, never a tag
    notes = dep.spec.template.metadata.annotations
    assert notes["ctflows.io/image-digest"] == pushed.split("@")[1]
    assert notes["ctflows.io/model-version"] == "1"
    assert notes["ctflows.io/mlflow-run-id"] == outcome.run_id
    assert notes["ctflows.io/data-md5"] == outcome.data_md5
    assert dep.status.observed_generation == dep.metadata.generation == 2
    assert dep.status.available_replicas == dep.status.updated_replicas == 2
    assert f"now runs {pushed}" in outcome.deploy


def test_wrong_container_fails_before_anything_changes(workspace, kube):
    configure(workspace, kube, container="server")
    with pytest.raises(DeployError, match="no container 'server'"):
        workspace.run(workspace.land_day(1, 3_000))
    assert champion_version(workspace) is None
    assert deployment(kube).metadata.generation == 1
    assert "failed at check-deployment" in workspace.slack.texts()[-1]


def test_missing_deployment_and_forbidden_are_named_and_change_nothing(workspace, kube):
    configure(workspace, kube, deployment="no-such-model")
    with pytest.raises(DeployError, match="does not exist"):
        workspace.run(workspace.land_day(1, 3_000))
    configure(workspace, kube, deployment="churn-model")
    inject(kube, method="GET", path="/deployments/churn-model", status=403, count=50)
    with pytest.raises(DeployError, match="403"):
        workspace.run(workspace.land_day(2, 3_000))
    assert champion_version(workspace) is None
    # neither 404 nor 403 is retried: one read each
    gets = [r for r in requests_seen(kube) if r["method"] == "GET" and "deployments/" in r["path"]]
    assert len(gets) == 2


def test_transient_api_errors_are_retried(workspace, kube):
    inject(kube, method="PATCH", status=409, count=1)
    inject(kube, method="PATCH", status=503, count=1)
    outcome = workspace.run(workspace.land_day(1, 3_000))
    assert outcome.kind == "promoted"
    assert image(kube) == version_image(workspace, "1")


def test_persistent_api_errors_restore_the_champion_alias(workspace, kube):
    first = workspace.run(workspace.land_day(1, 3_000))
    inject(kube, method="PATCH", status=500, count=100)
    with pytest.raises(DeployError, match="500"):
        workspace.run(workspace.land_day(2, 24_000))
    assert champion_version(workspace) == first.version
    assert image(kube) == version_image(workspace, "1")
    assert "failed at deploy" in workspace.slack.texts()[-1]


def test_registry_down_fails_before_alias_or_cluster_change(workspace, kube):
    first = workspace.run(workspace.land_day(1, 3_000))
    generation = deployment(kube).metadata.generation
    from tests.oci_registry import free_port

    raw = __import__("yaml").safe_load(workspace.params_file.read_text())
    raw["image"].update(repository=f"127.0.0.1:{free_port()}/churn-model", retries=0)
    workspace.params_file.write_text(__import__("yaml").safe_dump(raw, sort_keys=False))
    from tasks.oci_layout import ImageError

    with pytest.raises(ImageError, match=r"registry http://127\.0\.0\.1:\d+: does not answer"):
        workspace.run(workspace.land_day(2, 24_000))
    assert champion_version(workspace) == first.version
    assert deployment(kube).metadata.generation == generation
    assert image(kube) == version_image(workspace, "1")
    assert "failed at image" in workspace.slack.texts()[-1]


def test_unready_image_rolls_back_cluster_and_alias(workspace, kube):
    first = workspace.run(workspace.land_day(1, 3_000))
    apps(kube).patch_namespaced_deployment(
        "churn-model", "ctflows", {"spec": {"progressDeadlineSeconds": 1}}
    )
    never_ready(kube, "2")
    with pytest.raises(RolloutFailed, match="progress deadline") as err:
        workspace.run(workspace.land_day(2, 24_000))
    assert err.value.reverted_to == version_image(workspace, "1")
    assert champion_version(workspace) == first.version
    assert image(kube) == version_image(workspace, "1")
    dep = deployment(kube)
    assert dep.spec.template.metadata.annotations["ctflows.io/model-version"] == "1"
    assert dep.status.available_replicas == 2
    mlflow = store(workspace.params)
    failed_run = mlflow.get_model_version("churn-classifier", "2").run_id
    assert "progress deadline" in mlflow.get_run(failed_run).data.tags["ct.rollback_reason"]
    message = json.dumps(workspace.slack.messages[-1])
    assert "rolled back" in message and "failed at deploy" in workspace.slack.texts()[-1]


def test_rollout_timeout_also_rolls_back(workspace, kube):
    workspace.run(workspace.land_day(1, 3_000))
    configure(workspace, kube, rollout_timeout_seconds=1)
    never_ready(kube, "2")
    with pytest.raises(RolloutFailed, match="not available after"):
        workspace.run(workspace.land_day(2, 24_000))
    assert champion_version(workspace) == "1" and image(kube) == version_image(workspace, "1")


def test_manual_rollback_restores_registry_and_cluster_together(workspace, kube):
    from flows.rollback import rollback

    workspace.run(workspace.land_day(1, 3_000))
    second = workspace.run(workspace.land_day(2, 24_000))
    v1, v2 = version_image(workspace, "1"), version_image(workspace, "2")
    assert second.version == "2" and image(kube) == v2 and v1 != v2
    outcome = rollback(params_file=str(workspace.params_file))
    assert outcome.kind == "rolled-back" and outcome.version == "1"
    assert champion_version(workspace) == "1"
    assert image(kube) == v1  # the recorded digest, no rebuild
    notes = deployment(kube).spec.template.metadata.annotations
    assert notes["ctflows.io/model-version"] == "1"
    assert notes["ctflows.io/image-digest"] == v1.split("@")[1]
    again = rollback(version="2", params_file=str(workspace.params_file))
    assert again.version == "2" and champion_version(workspace) == "2"
    assert image(kube) == v2


def test_canary_goes_first_and_a_failing_canary_leaves_main_alone(workspace, kube):
    configure(workspace, kube, strategy="canary", canary={"suffix": "-canary", "hold_seconds": 0.5})
    first = workspace.run(workspace.land_day(1, 3_000))
    assert first.kind == "promoted" and "after canary" in first.deploy
    v1 = version_image(workspace, "1")
    assert image(kube, "churn-model-canary") == v1 and image(kube) == v1
    patches = [r["path"] for r in requests_seen(kube) if r["method"] == "PATCH"]
    assert patches[0].endswith("churn-model-canary") and patches[-1].endswith("/churn-model")

    apps(kube).patch_namespaced_deployment(
        "churn-model-canary", "ctflows", {"spec": {"progressDeadlineSeconds": 1}}
    )
    never_ready(kube, "2")
    generation = deployment(kube).metadata.generation
    with pytest.raises(RolloutFailed, match="churn-model-canary"):
        workspace.run(workspace.land_day(2, 24_000))
    assert deployment(kube).metadata.generation == generation  # main never touched
    assert image(kube, "churn-model-canary") == v1
    assert champion_version(workspace) == "1"


def _run_flow_process(ws, rev: str, api_url: str) -> subprocess.Popen:
    code = (
        "from flows.continuous_training import continuous_training as f; "
        f"f(rev={rev!r}, repo={str(ws.data_repo)!r}, params_file={str(ws.params_file)!r})"
    )
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=(ws.root / "flow-process.log").open("w"),  # read it when the flow ends early
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("kill_at", ["after-alias-moved", "after-patch"])
def test_kill_9_mid_promotion_is_repaired_by_the_next_run(workspace, kube, prefect_api, kill_at):
    ws = workspace
    first = ws.run(ws.land_day(1, 3_000))
    rev = ws.land_day(2, 24_000)
    seen = len(requests_seen(kube))
    # reads of the Deployment: 1 check before promotion, 2 deploy's own, then rollout status
    skip = 1 if kill_at == "after-alias-moved" else 2
    inject(kube, method="GET", path="/deployments/churn-model", delay=60, count=1, skip=skip)
    proc = _run_flow_process(ws, rev, prefect_api)

    def reached() -> bool:
        new = requests_seen(kube)[seen:]
        if kill_at == "after-alias-moved":
            return champion_version(ws) == "2"
        return any(r["method"] == "PATCH" for r in new)

    deadline = time.monotonic() + 240
    while not reached():
        log = (ws.root / "flow-process.log").read_text
        assert proc.poll() is None, f"the flow ended before the point to kill it: {log()[-3000:]}"
        assert time.monotonic() < deadline, f"never reached the kill point: {log()[-3000:]}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    running = deployment(kube).spec.template.metadata.annotations.get("ctflows.io/model-version")
    assert (champion_version(ws), running) != ("1", "1")  # the crash left them changed

    from tasks.config import load_params
    from tasks.journal import recover
    from tasks.train import setup_tracking

    params = load_params(ws.params_file)
    setup_tracking(params)
    note = recover(params)
    assert note and "died" in note
    running = deployment(kube).spec.template.metadata.annotations.get("ctflows.io/model-version")
    assert champion_version(ws) == running == first.version
    assert image(kube) == version_image(ws, "1")

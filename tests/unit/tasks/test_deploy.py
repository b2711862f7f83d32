import pytest

from tasks.cluster import DeployError, PodTemplate, rollout_status, template_patch
from tasks.deploy import ModelIdentity, image_reference, resolve_mode, targets
from tests.helpers import small_params

DIGEST = "sha256:" + "e" * 64
ID = ModelIdentity("churn", "7", "abc123", "f" * 32, f"reg.example/m@{DIGEST}", DIGEST, "serving")


def test_image_by_digest_and_patch_carry_the_model_identity(tmp_path):
    params = small_params(tmp_path)
    image = image_reference(ID, "cluster")
    assert image == f"reg.example/m@{DIGEST}"
    patch = template_patch(params.deploy.container, PodTemplate(image, ID.annotations()))
    spec = patch["spec"]["template"]
    assert spec["spec"]["containers"] == [{"name": params.deploy.container, "image": image}]
    notes = spec["metadata"]["annotations"]
    assert notes["ctflows.io/model-version"] == "7"
    assert notes["ctflows.io/mlflow-run-id"] == "abc123"
    assert notes["ctflows.io/data-md5"] == "f" * 32
    assert notes["ctflows.io/image-digest"] == DIGEST


@pytest.mark.parametrize(
    ("image", "mode", "error"),
    [
        ("", "dry-run", "no image built by digest"),
        ("reg.example/m:v7", "cluster", "no image built by digest"),
        (f"oci:/state/images@{DIGEST}", "cluster", "built locally, not pushed"),
    ],
)
def test_no_mutable_tag_and_no_local_image_reaches_a_cluster(image, mode, error):
    identity = ModelIdentity("churn", "7", "abc123", "f" * 32, image, DIGEST, "serving")
    with pytest.raises(DeployError, match=error):
        image_reference(identity, mode)
    local = ModelIdentity("churn", "7", "r", "m", f"oci:/s@{DIGEST}", DIGEST, "modelcar")
    assert image_reference(local, "dry-run") == f"oci:/s@{DIGEST}"


def test_restoring_a_template_removes_annotations_it_did_not_have():
    before = PodTemplate("reg/m:bootstrap", {"team": "ml"})
    now = PodTemplate("reg/m:v2", ID.annotations())
    patch = template_patch("model", before, now)
    notes = patch["spec"]["template"]["metadata"]["annotations"]
    assert notes["team"] == "ml"
    assert all(notes[k] is None for k in ID.annotations())


def dep(generation=2, observed=2, replicas=2, updated=2, total=2, available=2, reason=None):
    conditions = [{"type": "Progressing", "reason": reason or "NewReplicaSetAvailable"}]
    return {
        "metadata": {"name": "m", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": updated,
            "replicas": total,
            "availableReplicas": available,
            "conditions": conditions,
        },
    }


@pytest.mark.parametrize(
    ("state", "done", "failed", "words"),
    [
        (dep(), True, False, "successfully rolled out"),
        (dep(generation=3), False, False, "observed"),
        (dep(updated=1), False, False, "1 of 2 new replicas"),
        (dep(total=3), False, False, "old replicas are pending termination"),
        (dep(available=1), False, False, "1 of 2 updated replicas are available"),
        (dep(available=1, reason="ProgressDeadlineExceeded"), False, True, ""),
    ],
)
def test_rollout_status_decides_like_kubectl(state, done, failed, words):
    is_done, failure, message = rollout_status(state)
    assert is_done is done
    assert (failure is not None) is failed
    assert words in (message if not failed else "")


def test_canary_goes_first(tmp_path):
    rolling = small_params(tmp_path / "a")
    canary = small_params(tmp_path / "b", deploy={"strategy": "canary"})
    assert targets(rolling.deploy) == ["churn-model"]
    assert targets(canary.deploy) == ["churn-model-canary", "churn-model"]


@pytest.mark.parametrize(
    ("target", "named", "env", "home_config", "expected"),
    [
        ("auto", {}, {}, False, "dry-run"),
        # a kubeconfig in the environment or the home directory is not a cluster the user named
        ("auto", {}, {"KUBECONFIG": "/x"}, False, "dry-run"),
        ("auto", {}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, False, "dry-run"),
        ("auto", {}, {}, True, "dry-run"),
        ("auto", {"kubeconfig": "kube.yaml"}, {}, True, "dry-run"),  # no context: not named
        ("auto", {"kubeconfig": "kube.yaml", "context": "prod"}, {}, False, "cluster"),
        ("dry-run", {"kubeconfig": "k", "context": "prod"}, {"KUBECONFIG": "/x"}, True, "dry-run"),
        ("cluster", {}, {}, False, "cluster"),
    ],
)
def test_auto_deploys_only_to_a_cluster_named_in_params(
    tmp_path, monkeypatch, target, named, env, home_config, expected
):
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if home_config:
        (tmp_path / ".kube").mkdir()
        (tmp_path / ".kube" / "config").write_text("{}")
    params = small_params(tmp_path / "p", deploy={"target": target, **named})
    assert resolve_mode(params.deploy) == expected

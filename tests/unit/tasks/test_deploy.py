import pytest

from tasks.deploy import build_patch, render_image, resolve_mode
from tasks.promote import Promotion
from tests.helpers import small_params

PROMO = Promotion("churn", "champion", "7", "6", "abc123", "f" * 32)


def test_image_and_patch_carry_the_model_identity(tmp_path):
    params = small_params(
        tmp_path, deploy={"image_template": "reg/m:{model_name}-v{version}-{data_md5}"}
    )
    image = render_image(params.deploy.image_template, PROMO)
    assert image == "reg/m:churn-v7-ffffffffffff"
    patch = build_patch(params.deploy, image, PROMO)
    template = patch["spec"]["template"]
    assert template["spec"]["containers"] == [{"name": params.deploy.container, "image": image}]
    notes = template["metadata"]["annotations"]
    assert notes["ctflows.io/model-version"] == "7"
    assert notes["ctflows.io/mlflow-run-id"] == "abc123"
    assert notes["ctflows.io/data-md5"] == "f" * 32


@pytest.mark.parametrize(
    ("target", "env", "home_config", "expected"),
    [
        ("auto", {}, False, "dry-run"),
        ("auto", {"KUBECONFIG": "/x"}, False, "cluster"),
        ("auto", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, False, "cluster"),
        ("auto", {}, True, "cluster"),
        ("dry-run", {"KUBECONFIG": "/x"}, True, "dry-run"),
        ("cluster", {}, False, "cluster"),
    ],
)
def test_mode_is_explicit(tmp_path, monkeypatch, target, env, home_config, expected):
    monkeypatch.setenv("HOME", str(tmp_path))
    if home_config:
        (tmp_path / ".kube").mkdir()
        (tmp_path / ".kube" / "config").write_text("{}")
    params = small_params(tmp_path / "p", deploy={"target": target})
    assert resolve_mode(params.deploy, env) == expected

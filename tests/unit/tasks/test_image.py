"""The model image, built into an OCI layout without a registry: reproducible, labelled,
servable, and refused when the model or the base is wrong."""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

from tasks.config import ConfigError, ImageParams
from tasks.image import check_image_params
from tasks.image_build import ImageSpec, build_image
from tasks.oci_layout import ImageError, Layout
from tests.helpers import small_params

SPEC = ImageSpec(
    "churn-classifier",
    "7",
    "a" * 32,
    "d" * 32,
    "c" * 40,
    "p" * 16,
    f"runs:/{'a' * 32}/gates/report.json",
    "2026-01-02T03:04:05Z",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import mlflow
    from mlflow.models import infer_signature

    from tasks.data import make_batch
    from tasks.train import train_model

    params = small_params(tmp_path_factory.mktemp("image"), train={"hyperparameters": {}})
    batch = make_batch(1, 1_000)
    model = train_model(batch, params)
    sample = batch[params.data.features].head(20)
    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(sample, model.predict_proba(sample)[:, 1]),
        pip_requirements=["scikit-learn"],
        serialization_format="cloudpickle",
    )
    return path


def test_same_model_builds_to_the_same_digest(model_dir, tmp_path):
    image = ImageParams()
    first = build_image(model_dir, SPEC, image, tmp_path / "a")
    (model_dir / "MLmodel").touch()  # a newer mtime must not change the image
    second = build_image(model_dir, SPEC, image, tmp_path / "b")
    assert first.digest == second.digest and first.digest.startswith("sha256:")
    other = build_image(
        model_dir, SPEC.__class__(**{**SPEC.__dict__, "version": "8"}), image, tmp_path / "a"
    )
    assert other.digest != first.digest


def test_modelcar_without_base_says_so_and_holds_the_model_files(model_dir, tmp_path):
    built = build_image(model_dir, SPEC, ImageParams(), tmp_path / "layout")
    assert built.kind == "modelcar" and not built.pushed
    assert "model-only image (modelcar)" in built.summary()
    assert "built locally, not pushed" in built.summary()
    layout = Layout(tmp_path / "layout")
    index = layout.index()
    (entry,) = index["manifests"]
    assert entry["digest"] == built.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "churn-classifier-v7"
    manifest = layout.read(built.digest)
    (layer,) = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(layout.path(layer["digest"]).read_bytes())) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert "models/MLmodel" in names and "models/model.pkl" in names
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert {m.mtime for m in members} == {1767323045}
    assert {(m.uid, m.gid, m.uname) for m in members} == {(0, 0, "")}
    config = layout.read(manifest["config"]["digest"])
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_labels_and_annotations_carry_identity_and_oci_keys(model_dir, tmp_path):
    image = ImageParams(source="https://example.org/ctflows")
    built = build_image(model_dir, SPEC, image, tmp_path / "layout")
    layout = Layout(tmp_path / "layout")
    manifest = layout.read(built.digest)
    labels = layout.read(manifest["config"]["digest"])["config"]["Labels"]
    for keys in (labels, manifest["annotations"]):
        assert keys["ctflows.io/model-name"] == "churn-classifier"
        assert keys["ctflows.io/model-version"] == "7"
        assert keys["ctflows.io/mlflow-run-id"] == SPEC.run_id
        assert keys["ctflows.io/data-md5"] == SPEC.data_md5
        assert keys["ctflows.io/git-commit"] == SPEC.git_commit
        assert keys["ctflows.io/params-hash"] == SPEC.params_hash
        assert keys["ctflows.io/gate-report"].endswith("/gates/report.json")
        assert keys["org.opencontainers.image.created"] == SPEC.created
        assert keys["org.opencontainers.image.revision"] == SPEC.git_commit
        assert keys["org.opencontainers.image.source"] == "https://example.org/ctflows"


def test_a_model_the_serving_app_cannot_load_is_refused(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ImageError, match="serving app cannot load"):
        build_image(broken, SPEC, ImageParams(), tmp_path / "layout")
    assert not (tmp_path / "layout").exists()


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"base": "ghcr.io/team/serving:1.0"}, "image.base"),
        ({"base": "ghcr.io/team/serving@sha256:abc"}, "image.base"),
        ({"repository": "ghcr.io/team/model:v1"}, "image.repository"),
        ({"tag": "latest"}, "image.tag"),
        ({"platform": "amd64"}, "image.platform"),
    ],
)
def test_bad_image_params_name_the_key(tmp_path, values, key):
    with pytest.raises(ConfigError, match=key):
        small_params(tmp_path, image=values)


def test_old_image_template_says_what_replaced_it(tmp_path):
    with pytest.raises(ConfigError, match=r"image\.repository"):
        small_params(tmp_path, deploy={"image_template": "reg/m:{version}"})


def test_layout_index_is_valid_json_per_oci(model_dir, tmp_path):
    build_image(model_dir, SPEC, ImageParams(), tmp_path / "layout")
    assert json.loads((tmp_path / "layout" / "oci-layout").read_text())["imageLayoutVersion"]


BASE = "reg.example/serving@sha256:" + "1" * 64


@pytest.mark.parametrize(
    ("image", "missing"),
    [
        (ImageParams(), "image.repository"),
        (ImageParams(base=BASE), "image.repository"),
        (ImageParams(repository="reg.example/churn"), "image.base"),
    ],
)
def test_a_cluster_target_needs_a_pushed_serving_image(image, missing):
    with pytest.raises(ImageError, match=rf"cluster but {re.escape(missing)} is null"):
        check_image_params(image, "cluster")
    check_image_params(image, "dry-run")  # the embedded default builds locally
    check_image_params(ImageParams(repository="reg.example/churn", base=BASE), "cluster")

"""Model images against a real registry (Debian's docker-registry on loopback): pushed by
digest, agreed on by skopeo, servable after unpacking, and refused with named causes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tasks.config import ImageParams
from tasks.image_build import ImageSpec, build_image
from tasks.oci_layout import ImageError, Layout
from tasks.registry import Reference, Registry, RegistryError
from tasks.train import tracking_uri
from tests.helpers import store
from tests.oci_registry import free_port, push_base, skopeo_inspect, unpack

SPEC = ImageSpec(
    "churn-classifier",
    "3",
    "r" * 32,
    "d" * 32,
    "c" * 40,
    "p" * 16,
    "runs:/r/g",
    "2026-01-02T00:00:00Z",
)


def set_image(ws, **image) -> None:
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["image"] = {**raw.get("image", {}), **image}
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_pushed_image_agrees_with_skopeo_and_serves_the_candidates_scores(
    workspace, oci_registry, serving_base, tmp_path
):
    ws = workspace
    set_image(ws, repository=f"{oci_registry}/churn-model", base=serving_base)
    outcome = ws.run(ws.land_day(1, 3_000))
    assert outcome.kind == "promoted"
    mlflow = store(ws.params)
    tags = mlflow.get_model_version("churn-classifier", outcome.version).tags
    digest = tags["ct.image_digest"]
    assert tags["ct.image"] == f"{oci_registry}/churn-model@{digest}"
    assert tags["ct.image_kind"] == "serving"
    assert f"pushed to {oci_registry}/churn-model:churn-classifier-v1" in outcome.deploy
    record = json.loads((ws.params.state_dir / "deploy" / "dry-run.jsonl").read_text())
    assert record["image_digest"] == digest and record["image"] == tags["ct.image"]

    # skopeo agrees with what the flow reports: digest, layers, labels
    seen = skopeo_inspect(tags["ct.image"])
    local = Layout(ws.params.state_dir / "images")
    manifest = local.read(digest)
    assert seen["Digest"] == digest
    assert seen["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert len(seen["Layers"]) == 2  # the base's app layer + the model layer
    labels = seen["Labels"]
    assert labels["ctflows.io/model-version"] == outcome.version
    assert labels["ctflows.io/mlflow-run-id"] == outcome.run_id
    assert labels["ctflows.io/data-md5"] == outcome.data_md5
    assert labels["org.opencontainers.image.base.digest"] == serving_base.split("@")[1]
    assert labels["org.opencontainers.image.created"]

    # pull by digest, unpack like a runtime, start the serving app on the model found
    pulled = tmp_path / "pulled"
    Registry(oci_registry, ImageParams()).pull_layout(tags["ct.image"], pulled)
    rootfs = tmp_path / "rootfs"
    unpack(pulled, digest, rootfs)
    config = Layout(pulled).read(Layout(pulled).read(digest)["config"]["digest"])["config"]
    env = dict(e.split("=", 1) for e in config["Env"])
    port = free_port()
    server_log = (tmp_path / "serving.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", *config["Cmd"][:3], "--host", "127.0.0.1", "--port", str(port)],
        cwd=rootfs / config["WorkingDir"].lstrip("/"),
        env={
            **os.environ,
            "MODEL_URI": str(rootfs / env["MODEL_URI"].lstrip("/")),
            "PYTHONPATH": "",
        },
        stdout=server_log,
        stderr=server_log,
    )
    try:
        status = wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / "serving.log")
        assert status == 200
        from tasks.data import make_batch

        rows = make_batch(1, 40)[ws.params.data.features]
        body = json.dumps({"records": json.loads(rows.to_json(orient="records"))}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            served = json.loads(resp.read())["scores"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server_log.close()
    import mlflow as ml

    ml.set_tracking_uri(tracking_uri(ws.params))
    candidate = ml.sklearn.load_model(f"runs:/{outcome.run_id}/model")
    assert served == [float(s) for s in candidate.predict_proba(rows)[:, 1]]


def wait_ready(url: str, proc: subprocess.Popen, log) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the serving app exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return int(exc.code)
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the serving app never became ready")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import mlflow
    from mlflow.models import infer_signature

    from tasks.data import make_batch
    from tasks.train import train_model
    from tests.helpers import small_params

    params = small_params(tmp_path_factory.mktemp("p"), train={"hyperparameters": {}})
    batch = make_batch(1, 600)
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


def test_base_missing_from_the_registry_is_named(oci_registry, model_dir, tmp_path):
    missing = f"{oci_registry}/ctflows-serving@sha256:{'0' * 64}"
    with pytest.raises(ImageError, match="is not in registry"):
        build_image(model_dir, SPEC, ImageParams(base=missing), tmp_path / "layout")


def test_multi_arch_base_gives_the_platform_asked_for_or_names_those_available(
    oci_registry, model_dir, tmp_path
):
    base = push_base(oci_registry, tmp_path / "multi", ("linux/amd64", "linux/arm64/v8"))
    repo = f"{oci_registry}/churn-multi"
    built = build_image(
        model_dir,
        SPEC,
        ImageParams(base=base, repository=repo, platform="linux/arm64"),
        tmp_path / "l",
    )
    seen = skopeo_inspect(f"{repo}@{built.digest}")
    assert seen["Architecture"] == "arm64" and seen["Digest"] == built.digest
    with pytest.raises(
        ImageError, match=r"without linux/s390x \(it has linux/amd64, linux/arm64/v8\)"
    ):
        build_image(model_dir, SPEC, ImageParams(base=base, platform="linux/s390x"), tmp_path / "l")


def test_same_model_pushed_twice_keeps_its_digest(oci_registry, model_dir, tmp_path):
    repo = f"{oci_registry}/churn-repro"
    first = build_image(model_dir, SPEC, ImageParams(repository=repo), tmp_path / "a")
    second = build_image(model_dir, SPEC, ImageParams(repository=repo), tmp_path / "b")
    assert first.digest == second.digest == skopeo_inspect(f"{repo}:churn-classifier-v3")["Digest"]
    assert first.kind == "modelcar" and "model-only image (modelcar)" in first.summary()


class Refusing:
    """A registry that answers every request with one status (or a closed port)."""

    def __init__(self, status: int) -> None:
        code = status

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return

            def _answer(self) -> None:
                self.send_response(code)
                if code == 401:  # a token registry whose token endpoint refuses too
                    realm = f"http://{self.headers['Host']}/token"
                    self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="t"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (401, "401"),
        (403, "403"),
        (500, "500 Internal Server Error"),
        (503, "503"),
        (None, "does not answer"),
    ],
)
def test_registry_refusals_are_named(model_dir, tmp_path, status, cause):
    if status is None:
        host, server = f"127.0.0.1:{free_port()}", None
    else:
        server = Refusing(status)
        host = server.host
    image = ImageParams(repository=f"{host}/churn-model", retries=1, timeout_seconds=2)
    try:
        with pytest.raises(RegistryError, match=cause) as err:
            build_image(model_dir, SPEC, image, tmp_path / "layout")
        assert host in str(err.value)
    finally:
        if server:
            server.close()


def test_reference_parsing_requires_a_registry_host():
    assert Reference.parse("127.0.0.1:5000/a/b@sha256:" + "1" * 64).registry == "127.0.0.1:5000"
    with pytest.raises(ValueError, match="not a full image reference"):
        Reference.parse("churn-model:v1")

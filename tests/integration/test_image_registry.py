"""Model images against a real registry (Debian's docker-registry on loopback): pushed by
digest, agreed on by skopeo, refused with named causes, and pulled blobs checked against their
digests. (The promoted image run as a container: tests/integration/test_model_container.py.)"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tasks.config import ImageParams
from tasks.image_build import ImageSpec, build_image
from tasks.oci_layout import ImageError, Layout
from tasks.registry import Reference, RegistryError
from tests.oci_registry import free_port, push_index, skopeo_inspect

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
    base = push_index(oci_registry, tmp_path / "multi", ("linux/amd64", "linux/arm64/v8"))
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


def test_a_version_given_as_a_number_is_pushed_as_a_string_annotation(
    oci_registry, model_dir, tmp_path
):
    # a registry refuses a manifest with a number among its annotations (400 ... cannot
    # unmarshal number into ... annotations of type string)
    spec = ImageSpec(*(7 if f == "version" else getattr(SPEC, f) for f in SPEC.__annotations__))
    repo = f"{oci_registry}/churn-numbers"
    built = build_image(model_dir, spec, ImageParams(repository=repo), tmp_path / "l")
    seen = skopeo_inspect(f"{repo}@{built.digest}")
    assert seen["Labels"]["ctflows.io/model-version"] == "7"
    assert built.labels["org.opencontainers.image.version"] == "7"


class Corrupting:
    """A proxy in front of a registry that serves one blob with one byte changed."""

    def __init__(self, upstream: str, digest: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return

            def _forward(self) -> None:
                request = urllib.request.Request(
                    f"http://{upstream}{self.path}",
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                    method=self.command,
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as resp:
                        status, headers, body = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as exc:
                    status, headers, body = exc.code, exc.headers, exc.read()
                if self.command == "GET" and self.path.endswith(f"/blobs/{digest}") and body:
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in {"content-length", "transfer-encoding", "connection"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_blob_whose_bytes_do_not_match_its_digest_fails_naming_both_and_is_not_kept(
    oci_registry, model_dir, tmp_path
):
    base = push_index(oci_registry, tmp_path / "small")
    digest = base.split("@")[1]
    layer = Layout(tmp_path / "small").read(digest)["layers"][0]["digest"]
    proxy = Corrupting(oci_registry, layer)
    store = tmp_path / "layout"
    try:
        with pytest.raises(ImageError, match="served blob") as err:
            build_image(
                model_dir, SPEC, ImageParams(base=f"{proxy.host}/{base.split('/', 1)[1]}"), store
            )
    finally:
        proxy.close()
    assert proxy.host in str(err.value) and layer in str(err.value)
    assert "nothing of this pull was cached" in str(err.value)
    assert not Layout(store).has(layer) and not Layout(store).has(digest)
    # the same base from the registry itself (right bytes) builds: nothing bad was kept
    built = build_image(model_dir, SPEC, ImageParams(base=base), store)
    assert Layout(store).has(layer) and built.base == base

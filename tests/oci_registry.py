"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF distribution) on a free
loopback port with filesystem storage in a temporary folder; the serving base built from
``deployments/serving/Dockerfile`` by the code ``make serving-base`` runs (on a bookworm made by
mmdebstrap, cached between sessions) and pushed into it by its digest; and small hand-made
multi-platform indexes, only for the tests of platform selection.

``make registry-tools`` installs docker-registry and skopeo from Debian when missing,
``make container-tools`` podman, runc and mmdebstrap.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.config import ImageParams
from tasks.oci_layout import OCI_MANIFEST, Layout, _dump, model_layer, put_image
from tasks.registry import Reference, Registry
from tests.helpers import ROOT

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(
            f"{tool} is not installed: run `make registry-tools` (Debian packages "
            "docker-registry and skopeo); these tests never skip"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def docker_registry(folder: Path) -> Iterator[str]:
    """``docker-registry serve`` on 127.0.0.1:<free port>; yields ``127.0.0.1:<port>``."""
    binary = require("docker-registry")
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(folder / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yml").write_text(json.dumps(config))
    log = (folder / "registry.log").open("w")
    proc = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=log, stderr=log)
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(folder / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def push_serving_base(host: str) -> str:
    """The real serving base (built once, then found in podman's store and the cache's OCI
    layout), pushed as ``host/ctflows-serving``; returns ``host/ctflows-serving@sha256:...``."""
    from tasks.containers import Podman
    from tasks.serving_base import build_base, cached_layout

    podman = Podman()
    built = build_base(podman, bootstrap="bookworm")
    layout, tag, digest = cached_layout(podman, built.local)
    target = Reference.parse(f"{host}/ctflows-serving:{tag}")
    Registry(host, ImageParams(timeout_seconds=120)).push_layout(layout, tag, target)
    return f"{host}/ctflows-serving@{digest}"


def app_layer() -> bytes:
    """The serving app's source at /app, as the Dockerfile copies it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "deployments"
        (app / "serving").mkdir(parents=True)
        shutil.copy(ROOT / "deployments" / "__init__.py", app / "__init__.py")
        for source in (ROOT / "deployments" / "serving").glob("*.py"):  # as the Dockerfile
            shutil.copy(source, app / "serving" / source.name)
        return model_layer(app, "/app/deployments", 0)


def write_base(layout: Layout, platform: str, marker: str = "") -> str:
    """A small image for ``platform`` (the app's source, not runnable: no Python): only for
    tests of platform selection and blob checks; returns its manifest digest."""
    config = {
        "Env": ["PYTHONUNBUFFERED=1", "MODEL_URI=/models"],
        "Cmd": ["uvicorn", "--factory", "deployments.serving.app:create_app", "--port", "8080"],
        "WorkingDir": "/app",
        "Labels": {"org.opencontainers.image.title": f"ctflows-serving-test{marker}"},
    }
    history = [{"created": "2026-01-01T00:00:00Z", "created_by": "tests/oci_registry.py"}]
    return put_image(layout, platform, config, [app_layer()], history)


def push_index(host: str, folder: Path, platforms: tuple[str, ...] = ("linux/amd64",)) -> str:
    """Push small images (an index when several platforms) as ``host/ctflows-serving``; returns
    the pinned reference ``host/ctflows-serving@sha256:...``. Not a serving base."""
    layout = Layout(folder).init()
    digests = [write_base(layout, p, marker=p) for p in platforms]
    if len(platforms) == 1:
        digest = digests[0]
    else:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": d,
                    "size": layout.path(d).stat().st_size,
                    "platform": dict(
                        zip(("os", "architecture", "variant"), p.split("/"), strict=False)
                    ),
                }
                for d, p in zip(digests, platforms, strict=True)
            ],
        }
        digest = layout.put(_dump(index))
    index_json = layout.index()
    index_json["manifests"] = [
        {
            "mediaType": OCI_INDEX if len(platforms) > 1 else OCI_MANIFEST,
            "digest": digest,
            "size": layout.path(digest).stat().st_size,
            "annotations": {"org.opencontainers.image.ref.name": "base"},
        }
    ]
    (folder / "index.json").write_text(json.dumps(index_json))
    tag = "multi" if len(platforms) > 1 else "1.0"
    target = Reference.parse(f"{host}/ctflows-serving:{tag}")
    Registry(host, ImageParams()).push_layout(folder, "base", target)
    return f"{host}/ctflows-serving@{digest}"


def unpack(layout: Path, digest: str, rootfs: Path) -> None:
    """Apply an image's layers in order into ``rootfs``, as a container runtime does
    (whiteouts ``.wh.<name>`` delete what lower layers put there)."""
    import tarfile

    store = Layout(layout)
    manifest = store.read(digest)
    rootfs.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        with tarfile.open(store.path(layer["digest"]), "r:*") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.name.startswith(".wh."):
                    victim = rootfs / name.parent / name.name.removeprefix(".wh.")
                    shutil.rmtree(victim, ignore_errors=True) if victim.is_dir() else victim.unlink(
                        missing_ok=True
                    )
                    continue
                tar.extract(member, rootfs, filter="data")


def skopeo_inspect(ref: str) -> dict[str, Any]:
    out = subprocess.run(
        [require("skopeo"), "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data

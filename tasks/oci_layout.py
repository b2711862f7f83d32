"""The OCI image layout on disk, and the bytes that go into it, without a Docker daemon.

An OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``) holding many images,
each named by ``ref.name`` as ``skopeo copy ... oci:<dir>:<tag>`` writes; the model layer as
a reproducible tar; a base image brought in from a registry (one platform of a
multi-architecture index) or an empty one; and a new manifest that is the base plus one layer.

The layer is a plain tar with sorted entries, root ownership, fixed modes and one given mtime,
so the same model builds to the same digest, here or in CI. (olot's ``oci_layers_on_top``
stamps the history with the blob's ctime and the tar with the builder's user, which would
break that; olot checks the layout, oras-py moves it.)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tasks.errors import CtflowsError
from tasks.registry import MANIFEST_TYPES, Reference, Registry

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
LABEL = "ctflows.io/"


class ImageError(CtflowsError, RuntimeError):
    """The model image could not be built, pushed or found; the message names the cause."""


class BlobMismatch(ImageError):
    """A registry served bytes that do not match the digest they were asked for by."""

    def __init__(self, registry: str, digest: str, found: str) -> None:
        self.registry, self.digest, self.found = registry, digest, found
        super().__init__(
            f"registry {registry} served blob {digest} whose bytes have digest {found}: "
            "corrupt or tampered; nothing of this pull was cached; check the registry "
            "(or its proxy) and run again"
        )


# -- the layer ----------------------------------------------------------------------------------
def model_layer(model_dir: Path, model_path: str, mtime: int) -> bytes:
    """A reproducible tar of ``model_dir`` placed at ``model_path``: sorted, root-owned,
    fixed modes, every mtime ``mtime``. Symlinks and special files are refused."""
    buf = io.BytesIO()
    root = model_path.strip("/")
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = root.split("/")
        for i in range(len(parts)):
            tar.addfile(_entry("/".join(parts[: i + 1]) + "/", tarfile.DIRTYPE, 0o755, mtime))
        for path in sorted(model_dir.rglob("*"), key=lambda p: p.relative_to(model_dir).parts):
            name = f"{root}/{path.relative_to(model_dir).as_posix()}"
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise ImageError(f"{path}: only plain files and folders go into a model image")
            if path.is_dir():
                tar.addfile(_entry(name + "/", tarfile.DIRTYPE, 0o755, mtime))
                continue
            info = _entry(name, tarfile.REGTYPE, 0o644, mtime)
            info.size = path.stat().st_size
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def _entry(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.rstrip("/") if kind == tarfile.DIRTYPE else name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# -- the OCI layout -----------------------------------------------------------------------------
def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class Layout:
    """An OCI image layout holding many images, each named by ``ref.name`` in index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"

    def init(self) -> Layout:
        self.blobs.mkdir(parents=True, exist_ok=True)
        marker = self.root / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        if not (self.root / "index.json").exists():
            self._write_index({"schemaVersion": 2, "manifests": []})
        return self

    def path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def put(self, data: bytes) -> str:
        digest = _digest(data)
        target = self.path(digest)
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return digest

    def read(self, digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path(digest).read_bytes())
        return data

    def adopt(self, other: Path, source: str) -> None:
        """Move the blobs of another layout (a pull from ``source``) into this one, each
        checked against its digest first: a blob whose bytes do not match fails naming
        ``source`` and the digest, and nothing of that pull is kept."""
        blobs = sorted((other / "blobs" / "sha256").iterdir())
        for blob in blobs:
            found = file_digest(blob)
            if found != f"sha256:{blob.name}":
                raise BlobMismatch(source, f"sha256:{blob.name}", found)
        for blob in blobs:
            if not self.path(blob.name).exists():
                shutil.move(str(blob), self.path(blob.name))

    def index(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "index.json").read_text())
        return data

    def _write_index(self, index: dict[str, Any]) -> None:
        tmp = self.root / f".index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        tmp.replace(self.root / "index.json")

    def name(self, tag: str, digest: str, annotations: dict[str, str]) -> None:
        """Point ``tag`` at the manifest ``digest`` (replacing what the tag named before)."""
        index = self.index()
        entries = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": self.path(digest).stat().st_size,
                "annotations": {**annotations, REF_NAME: tag},
            }
        )
        self._write_index({**index, "manifests": entries})

    def verify(self) -> None:
        from olot.oci.oci_image_layout import verify_ocilayout

        verify_ocilayout(self.root)


def empty_base(layout: Layout, platform: str) -> str:
    """A model-only image's base: no layers, only the platform. Returns its manifest digest."""
    return put_image(layout, platform, {}, [])


def put_image(
    layout: Layout,
    platform: str,
    config: dict[str, Any],
    layers: list[bytes],
    history: list[dict[str, str]] | None = None,
) -> str:
    """Write an image for ``platform`` (``os/arch[/variant]``) with the run ``config``
    (``Env``, ``Cmd``, ...) and uncompressed tar ``layers``; returns its manifest digest."""
    os_, arch, *variant = platform.split("/")
    image: dict[str, Any] = {
        "architecture": arch,
        "os": os_,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layout.put(layer) for layer in layers]},
    }
    if history:
        image["history"] = history
    if variant:
        image["variant"] = variant[0]
    raw = _dump(image)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": layout.put(raw), "size": len(raw)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": layout.put(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    return layout.put(_dump(manifest))


def pick_platform(index: dict[str, Any], platform: str, base: str) -> str:
    """The digest of ``platform``'s manifest in a multi-architecture index, or ImageError
    naming the platforms the base has."""
    available: dict[str, str] = {}
    for entry in index.get("manifests", []):
        p = entry.get("platform") or {}
        if p.get("os") in (None, "unknown") or p.get("architecture") in (None, "unknown"):
            continue  # attestations and other non-runnable entries
        name = "/".join(x for x in (p["os"], p["architecture"], p.get("variant")) if x)
        available.setdefault(name, entry["digest"])
    if platform in available:
        return available[platform]
    loose = {k.rsplit("/", 1)[0]: v for k, v in available.items() if k.count("/") == 2}
    if platform in loose:
        return loose[platform]
    raise ImageError(
        f"base image {base} is multi-architecture without {platform} (it has "
        f"{', '.join(sorted(available)) or 'no runnable platform'}); set image.platform"
    )


def fetch_base(registry: Registry, base: str, platform: str, layout: Layout) -> str:
    """Bring the base image's manifest for ``platform`` and its blobs into ``layout``."""
    ref = Reference.parse(base)
    manifest = registry.manifest(ref)
    if manifest is None:
        raise ImageError(
            f"base image {base} is not in registry {registry.url} (manifest unknown): push it "
            "from CI (deployments/serving/Dockerfile) or fix image.base"
        )
    digest = manifest.digest
    if manifest.is_index:
        digest = pick_platform(manifest.data, platform, base)
    elif manifest.media_type not in MANIFEST_TYPES:
        raise ImageError(f"base image {base} is a {manifest.media_type}, not an image")
    if layout.has(digest):
        return digest  # already pulled by an earlier build
    with tempfile.TemporaryDirectory(dir=layout.root, prefix=".pull-") as tmp:
        try:
            registry.pull_layout(ref.with_digest(digest), Path(tmp) / "layout")
        except ValueError as exc:  # oras: a media type it does not handle
            raise ImageError(
                f"base image {base}: {exc}; build it with OCI media types "
                "(docker buildx ... --output type=image,oci-mediatypes=true,push=true)"
            ) from exc
        pulled = Layout(Path(tmp) / "layout")
        media = pulled.read(digest).get("mediaType")
        if media != OCI_MANIFEST:
            raise ImageError(
                f"base image {base} uses media type {media}; rebuild it with OCI media types "
                "(docker buildx ... --output type=image,oci-mediatypes=true,push=true)"
            )
        check_base(pulled.read(pulled.read(digest)["config"]["digest"]), platform, base)
        layout.adopt(Path(tmp) / "layout", registry.url)
    return digest


def check_base(config: dict[str, Any], platform: str, base: str) -> None:
    """A base must be for ``platform`` and have a command to run: refused before any build."""
    os_, arch, *variant = platform.split("/")
    found = "/".join(x for x in (config.get("os"), config.get("architecture")) if x)
    if (config.get("os"), config.get("architecture")) != (os_, arch) or (
        variant and config.get("variant") not in (None, variant[0])
    ):
        raise ImageError(
            f"base image {base} is for {found or 'no platform'}, not {platform}: "
            "set image.platform to what your nodes run, or build the base for it"
        )
    run = config.get("config") or {}
    if not (run.get("Cmd") or run.get("Entrypoint")):
        raise ImageError(
            f"base image {base} has no command (its config sets neither Cmd nor Entrypoint): "
            "a container of it would run nothing; build it from deployments/serving/Dockerfile"
        )


def append_model(
    layout: Layout,
    base_digest: str,
    layer: bytes,
    labels: dict[str, str],
    created: str,
    model_path: str,
) -> tuple[str, str]:
    """Base manifest + one layer -> a new manifest in ``layout``: (manifest, layer) digests."""
    base = layout.read(base_digest)
    config = layout.read(base["config"]["digest"])
    layer_digest = layout.put(layer)
    config["created"] = created
    config.setdefault("config", {})
    config["config"]["Labels"] = {**(config["config"].get("Labels") or {}), **labels}
    env = [e for e in config["config"].get("Env") or [] if not e.startswith("MODEL_URI=")]
    config["config"]["Env"] = [*env, f"MODEL_URI={model_path}"]
    config["rootfs"]["diff_ids"] = [*config["rootfs"]["diff_ids"], layer_digest]
    config["history"] = [
        *(config.get("history") or []),
        {
            "created": created,
            "created_by": f"ctflows: MLflow model {labels.get(LABEL + 'model-name')} "
            f"v{labels.get(LABEL + 'model-version')} at {model_path}",
        },
    ]
    raw_config = _dump(config)
    manifest = {
        **base,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": layout.put(raw_config),
            "size": len(raw_config),
        },
        "layers": [
            *base["layers"],
            {
                "mediaType": OCI_LAYER,
                "digest": layer_digest,
                "size": len(layer),
                "annotations": {"org.opencontainers.image.title": model_path.strip("/")},
            },
        ],
        "annotations": {**(base.get("annotations") or {}), **labels},
    }
    return layout.put(_dump(manifest)), layer_digest

"""Stage `image`: the promoted model's OCI image, built without a Docker daemon.

The way ko, jib and ``crane append`` build: the serving base image (``image.base``, pinned by
digest) plus one layer holding the MLflow model directory at ``image.model_path``. With no
base, the layer goes on an empty base: a model-only image (KServe's "modelcar") that a pod
mounts as an image volume. The image is written into the OCI image layout
``<state_dir>/images`` (one entry per tag, as ``skopeo copy ... oci:<dir>:<tag>`` writes) and,
when ``image.repository`` is set, pushed there by oras-py and checked by digest.

The layer is a plain tar with sorted entries, root ownership, fixed modes and the run's start
time as every mtime; the config's ``created`` is that same time. So the same model builds to
the same digest, here or in CI. (olot's ``oci_layers_on_top`` stamps the history with the
blob's ctime and the tar with the builder's user, which would break that; olot checks the
layout, oras-py moves it.)
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import ImageParams, Params
from tasks.registry import MANIFEST_TYPES, Reference, Registry, RegistryError

log = logging.getLogger(__name__)

Kind = Literal["serving", "modelcar"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
LABEL = "ctflows.io/"
DIGEST_TAG = "ct.image_digest"
IMAGE_TAG = "ct.image"
KIND_TAG = "ct.image_kind"


class ImageError(RuntimeError):
    """The model image could not be built, pushed or found; the message names the cause."""


@dataclass(frozen=True)
class ImageSpec:
    """What the image says about the model it holds (labels and annotations)."""

    model_name: str
    version: str
    run_id: str
    data_md5: str
    git_commit: str
    params_hash: str
    gate_report: str
    created: str  # RFC 3339; the run's start, so a rebuild gives the same digest

    def tag(self, template: str) -> str:
        return template.format(
            model_name=self.model_name,
            version=self.version,
            run_id=self.run_id,
            data_md5=self.data_md5[:12],
        )


@dataclass(frozen=True)
class ModelImage:
    """A built model image: its digest, where it is, and what kind it is."""

    kind: Kind
    tag: str
    digest: str
    layout: Path
    repository: str | None
    base: str | None
    layers: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def pushed(self) -> bool:
        return self.repository is not None

    @property
    def reference(self) -> str:
        """``repo@sha256:...`` when pushed; else the OCI layout's ``oci:<dir>@sha256:...``."""
        if self.repository:
            return f"{self.repository}@{self.digest}"
        return f"oci:{self.layout}@{self.digest}"

    def summary(self) -> str:
        what = "serving image" if self.kind == "serving" else "model-only image (modelcar)"
        where = (
            f"pushed to {self.repository}:{self.tag}"
            if self.pushed
            else f"built locally, not pushed ({self.layout}:{self.tag})"
        )
        return f"{what} {self.digest} {where}"


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

    def adopt(self, other: Path) -> None:
        """Move the blobs of another layout (a pull) into this one."""
        for blob in (other / "blobs" / "sha256").iterdir():
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
    os_, arch, *variant = platform.split("/")
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os_,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    if variant:
        config["variant"] = variant[0]
    raw = _dump(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": layout.put(raw), "size": len(raw)},
        "layers": [],
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
        layout.adopt(Path(tmp) / "layout")
    return digest


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


def image_labels(spec: ImageSpec, kind: Kind, image: ImageParams) -> dict[str, str]:
    """The model's identity and the org.opencontainers.image.* keys, as labels and annotations."""
    labels = {
        f"{LABEL}model-name": spec.model_name,
        f"{LABEL}model-version": spec.version,
        f"{LABEL}mlflow-run-id": spec.run_id,
        f"{LABEL}data-md5": spec.data_md5,
        f"{LABEL}git-commit": spec.git_commit,
        f"{LABEL}params-hash": spec.params_hash,
        f"{LABEL}gate-report": spec.gate_report,
        f"{LABEL}image-kind": kind,
        f"{LABEL}model-path": image.model_path,
        "org.opencontainers.image.created": spec.created,
        "org.opencontainers.image.revision": spec.git_commit,
        "org.opencontainers.image.title": spec.model_name,
        "org.opencontainers.image.version": spec.version,
    }
    if image.source:
        labels["org.opencontainers.image.source"] = image.source
    if image.base:
        ref = Reference.parse(image.base)
        labels["org.opencontainers.image.base.name"] = ref.repository
        labels["org.opencontainers.image.base.digest"] = ref.digest or ""
    return labels


def check_servable(model_dir: Path) -> None:
    """Load the model the way the serving app does (load + probe prediction), or ImageError."""
    from deployments.serving.app import ModelHolder

    holder = ModelHolder(str(model_dir))
    holder.load()
    if holder.error is not None:
        raise ImageError(
            f"the serving app cannot load the model directory {model_dir}: {holder.error}"
        )


def build_image(
    model_dir: Path,
    spec: ImageSpec,
    image: ImageParams,
    layout_dir: Path,
    registry_for: Any = None,
) -> ModelImage:
    """Build (and push, with ``image.repository``) the model image; check the push by digest.

    ``registry_for(host) -> Registry`` is injectable for tests.
    """
    import time

    started = time.monotonic()
    connect = registry_for or (lambda host: Registry(host, image))
    check_servable(model_dir)
    kind: Kind = "serving" if image.base else "modelcar"
    layout = Layout(layout_dir).init()
    if image.base:
        base_ref = Reference.parse(image.base)
        base_digest = fetch_base(connect(base_ref.registry), image.base, image.platform, layout)
    else:
        base_digest = empty_base(layout, image.platform)
    labels = image_labels(spec, kind, image)
    mtime = int(datetime.fromisoformat(spec.created.replace("Z", "+00:00")).timestamp())
    layer = model_layer(model_dir, image.model_path, mtime)
    digest, _ = append_model(layout, base_digest, layer, labels, spec.created, image.model_path)
    tag = spec.tag(image.tag)
    layout.name(tag, digest, labels)
    layout.verify()
    layers = tuple(d["digest"] for d in layout.read(digest)["layers"])
    if image.repository:
        target = Reference.parse(f"{image.repository}:{tag}")
        registry = connect(target.registry)
        registry.push_layout(layout.root, tag, target)
        verify_pushed(registry, image.repository, digest)
    return ModelImage(
        kind,
        tag,
        digest,
        layout.root,
        image.repository,
        image.base,
        layers,
        labels,
        time.monotonic() - started,
    )


def verify_pushed(registry: Registry, repository: str, digest: str) -> None:
    """The registry must serve ``repository@digest``: else ImageError before anything moves."""
    ref = Reference.parse(f"{repository}@{digest}")
    found = registry.manifest(ref)
    if found is None:
        raise ImageError(
            f"registry {registry.url} has no manifest {ref}: the image is not there; "
            "nothing was promoted or deployed"
        )


# -- MLflow edges -------------------------------------------------------------------------------
def image_spec(model_name: str, version: str, run_id: str) -> ImageSpec:
    """The identity of a registered version, from its run's lineage tags and start time."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    tags = run.data.tags
    created = datetime.fromtimestamp(run.info.start_time // 1000, tz=UTC)
    return ImageSpec(
        model_name,
        version,
        run_id,
        tags.get("ct.data_md5", ""),
        tags.get("ct.git_commit", ""),
        tags.get("ct.params_hash", ""),
        f"runs:/{run_id}/gates/report.json",
        created.isoformat().replace("+00:00", "Z"),
    )


def record_image(model_name: str, version: str, built: ModelImage) -> None:
    """Tag the model version with its image, so it can be redeployed without a rebuild."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(model_name, version, DIGEST_TAG, built.digest)
    client.set_model_version_tag(model_name, version, IMAGE_TAG, built.reference)
    client.set_model_version_tag(model_name, version, KIND_TAG, built.kind)


def images_dir(params: Params) -> Path:
    return params.state_dir / "images"


def check_image_params(image: ImageParams, mode: str) -> None:
    """A cluster pulls the serving image from a registry: both must be configured."""
    if mode == "cluster" and not (image.repository and image.base):
        missing = "image.repository" if not image.repository else "image.base"
        raise ImageError(
            f"deploy target is a cluster but {missing} is null: a cluster runs the serving "
            "image (base + model) pulled from a registry; set image.repository and image.base "
            "(a model-only image runs as in deployments/k8s/modelcar/, not patched by the flow)"
        )


@task(name="build-model-image", cache_policy=NONE)
def build_model_image(model_uri: str, model_name: str, version: str, params: Params) -> ModelImage:
    """Build the version's image (base + model layer), push it and check it by digest; record
    it on the MLflow version. Fails, naming the registry and cause, before any alias moves."""
    import mlflow

    from tasks.deploy import resolve_mode

    logger = get_run_logger()
    image = params.image
    check_image_params(image, resolve_mode(params.deploy))
    spec = image_spec(model_name, version, _run_id(model_name, version))
    with tempfile.TemporaryDirectory(prefix="ctflows-model-") as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        logger.info(
            "building the %s image of %s v%s (run %s, md5=%s)",
            "serving" if image.base else "model-only",
            model_name,
            version,
            spec.run_id,
            spec.data_md5[:10],
        )
        try:
            built = build_image(model_dir, spec, image, images_dir(params))
        except RegistryError as exc:
            raise ImageError(f"model image of {model_name} v{version}: {exc}") from exc
    record_image(model_name, version, built)
    logger.info("%s in %.1fs (%s v%s)", built.summary(), built.seconds, model_name, version)
    if built.kind == "modelcar":
        logger.warning(
            "no image.base set: built a model-only image (modelcar), which a pod mounts as an "
            "image volume beside the serving container (deployments/k8s/modelcar/)"
        )
    return built


def _run_id(model_name: str, version: str) -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient().get_model_version(model_name, version).run_id)


def find_image(identity_image: str, params: Params) -> None:
    """A recorded image (``repo@sha256:...``) must still be in its registry before a rollback
    points the cluster at it; a locally built image must still be in the OCI layout."""
    if identity_image.startswith("oci:"):
        layout, _, digest = identity_image.removeprefix("oci:").rpartition("@")
        if not Layout(Path(layout)).has(digest):
            raise ImageError(f"{identity_image} is no longer in the OCI layout {layout}")
        return
    ref = Reference.parse(identity_image)
    try:
        found = Registry(ref.registry, params.image).manifest(ref)
    except RegistryError as exc:
        raise ImageError(f"cannot check {identity_image}: {exc}") from exc
    if found is None:
        raise ImageError(f"registry {ref.registry} no longer has {identity_image}; rebuild it")


@task(name="check-image", cache_policy=NONE)
def check_image(identity_image: str, params: Params) -> None:
    if not identity_image:
        raise ImageError("this model version has no recorded image (MLflow tag ct.image)")
    find_image(identity_image, params)
    get_run_logger().info("%s is in its registry", identity_image)

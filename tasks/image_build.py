"""The model image: what it says about the model, and its build, push and check by digest.

The way ko, jib and ``crane append`` build: the serving base image (``image.base``, pinned by
digest) plus one layer holding the MLflow model directory at ``image.model_path``. With no
base, the layer goes on an empty base: a model-only image (KServe's "modelcar") that a pod
mounts as an image volume. The image is written into an OCI image layout (tasks.oci_layout)
and, when ``image.repository`` is set, pushed there by oras-py and checked by digest. Every
mtime in the layer and the config's ``created`` are the run's start time, so the same model
builds to the same digest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tasks.config import ImageParams
from tasks.oci_layout import (
    LABEL,
    ImageError,
    Layout,
    append_model,
    empty_base,
    fetch_base,
    model_layer,
)
from tasks.registry import Reference, Registry

log = logging.getLogger(__name__)

Kind = Literal["serving", "modelcar"]


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
    # OCI annotations are strings: a registry refuses a manifest with a number among them
    return {key: str(value) for key, value in labels.items()}


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

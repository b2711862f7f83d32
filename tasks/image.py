"""Stage `image`: the promoted model's OCI image, built without a Docker daemon.

The tasks around the build (tasks.image_build, into the layout of tasks.oci_layout): the
version's identity read from its MLflow run, the image built, pushed and checked by digest,
then recorded on the MLflow version (tags ``ct.image``, ``ct.image_digest``,
``ct.image_kind``) so it can be redeployed without a rebuild; and, before a rollback, the
check that a recorded image is still where it was pushed.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import ImageParams, Params
from tasks.data import DataVersion, read_version, split_holdout
from tasks.gates.infra_validation import validate_image
from tasks.image_build import ImageSpec, ModelImage, build_image
from tasks.oci_layout import ImageError, Layout
from tasks.registry import Reference, Registry, RegistryError
from tasks.reports import GateResult

log = logging.getLogger(__name__)

DIGEST_TAG = "ct.image_digest"
IMAGE_TAG = "ct.image"
KIND_TAG = "ct.image_kind"


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


@task(name="validate-model-image", cache_policy=NONE)
def validate_model_image(
    built: ModelImage, pipeline: Any, version: DataVersion, params: Params
) -> GateResult | None:
    """Gate ``infra_validation``: run the pushed image on ``gates.infra_validation.runtime``
    and check it answers a probe batch of holdout rows with the candidate's own scores.
    None when the runtime is null (the gate is off; logged)."""
    from deployments.serving.app import model_scores

    logger = get_run_logger()
    infra = params.gates.infra_validation
    if infra.runtime is None:
        logger.info("infra validation is off (gates.infra_validation.runtime: null)")
        return None
    _, holdout = split_holdout(read_version(version), params.data)
    rows = holdout[params.data.features].head(infra.probe_rows).reset_index(drop=True)
    expected, _ = model_scores(pipeline, rows)
    result = validate_image(built, rows, expected, infra)
    logger.info("infra validation %s: %s", result.status, result.reason.splitlines()[0])
    return result


@task(name="check-image", cache_policy=NONE)
def check_image(identity_image: str, params: Params) -> None:
    if not identity_image:
        raise ImageError("this model version has no recorded image (MLflow tag ct.image)")
    find_image(identity_image, params)
    get_run_logger().info("%s is in its registry", identity_image)

"""Benchmark of the model image: build (base + model layer) and push to a loopback registry.

    python -m bench.image [--rows 200000] [--runs 3] [--flow-seconds S]

Trains the benchmark model (the flow's estimator and hyperparameters on ``--rows`` rows),
starts Debian's docker-registry on loopback, pushes the serving base built from
deployments/serving/Dockerfile (found in podman's store: the seconds that takes are reported
as the cached base build), then times ``tasks.image_build.build_image`` end to end (servable
check, base from the registry, the reproducible layer, push by oras-py, manifest check by
digest) for a new version each run. The share is image seconds / flow seconds (from
``--flow-seconds`` or bench/results.json's ``flow_seconds``). Target: under 10 % of a flow run.
Then gate infra_validation on the last image (pull by digest, run with podman + runc, ready,
probe of 50 rows, SIGTERM): what the gate adds to a served run. Target: under 15 s.

``bench_image`` is the function bench/run.py calls; it returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_SHARE = 0.10
TARGET_INFRA_SECONDS = 15.0


def save_benchmark_model(params: Any, rows: int, folder: Path) -> Path:
    """The flow's candidate on ``rows`` rows, saved as the flow logs it (MLflow sklearn)."""
    import cloudpickle
    import mlflow
    from mlflow.models import infer_signature

    import tasks.encoders
    from tasks.data import make_batch
    from tasks.train import train_model

    batch = make_batch(1, rows)
    model = train_model(batch, params)
    sample = batch[params.data.features].head(100)
    path = folder / "model"
    cloudpickle.register_pickle_by_value(tasks.encoders)  # as the flow logs it: no tasks/ there
    try:
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(sample, model.predict_proba(sample)[:, 1]),
            pip_requirements=["scikit-learn", "lightgbm"],
            serialization_format="cloudpickle",
        )
    finally:
        cloudpickle.unregister_pickle_by_value(tasks.encoders)
    return path


def bench_image(
    params: Any, model_dir: Path, runs: int, flow_seconds: float | None
) -> dict[str, Any]:
    """Median seconds to build and push the model image (base cached), its first (cold) run,
    the model layer's size, and the share of a flow run."""
    from tasks.image_build import ImageSpec, build_image
    from tests.oci_registry import docker_registry, push_serving_base

    with tempfile.TemporaryDirectory(prefix="ctflows-bench-image-") as tmp:
        folder = Path(tmp)
        with docker_registry(folder / "registry") as host:
            started = time.perf_counter()
            base = push_serving_base(host)
            base_seconds = time.perf_counter() - started
            image = params.image.model_copy(
                update={"repository": f"{host}/churn-model", "base": base}
            )
            times, size = [], 0
            for i in range(runs + 1):  # the first pulls the base: reported apart
                spec = ImageSpec(
                    params.registry.model_name,
                    str(i + 1),
                    f"{i:032x}",
                    "0" * 32,
                    "0" * 40,
                    params.params_hash(),
                    "runs:/bench/gates/report.json",
                    "2026-01-01T00:00:00Z",
                )
                started = time.perf_counter()
                built = build_image(model_dir, spec, image, folder / "images")
                times.append(time.perf_counter() - started)
                size = (
                    (folder / "images" / "blobs" / "sha256" / built.layers[-1][7:]).stat().st_size
                )
            infra = bench_infra(params, model_dir, built)
    median = statistics.median(times[1:])
    result: dict[str, Any] = {
        "image_build_push_seconds": round(median, 3),
        "image_build_push_cold_seconds": round(times[0], 3),
        "image_model_layer_bytes": size,
        "image_all_seconds": [round(t, 3) for t in times],
        "serving_base_cached_seconds": round(base_seconds, 3),
        **infra,
        "infra_gate_target_seconds": TARGET_INFRA_SECONDS,
    }
    if flow_seconds:
        result["image_share_of_flow"] = round(median / flow_seconds, 3)
        result["image_share_target"] = TARGET_SHARE
    return result


def bench_infra(params: Any, model_dir: Path, built: Any) -> dict[str, Any]:
    """Seconds gate infra_validation takes on ``built`` (pull, run, ready, probe, stop)."""
    import mlflow

    from deployments.serving.app import model_scores
    from tasks.config.gates import InfraValidationParams
    from tasks.data import make_batch, split_holdout
    from tasks.gates.infra_validation import validate_image

    rows = split_holdout(make_batch(2, 2_000), params.data)[1][params.data.features].head(50)
    expected, _ = model_scores(mlflow.sklearn.load_model(str(model_dir)), rows)
    started = time.perf_counter()
    result = validate_image(built, rows, expected, InfraValidationParams(runtime="podman"))
    seconds = time.perf_counter() - started
    if result.status != "passed":
        raise RuntimeError(f"infra validation failed in the benchmark: {result.reason}")
    return {
        "infra_gate_seconds": round(seconds, 3),
        "infra_ready_seconds": round(result.candidate or 0.0, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flow-seconds", type=float, default=None)
    args = parser.parse_args(argv)

    from tasks.config import load_params

    flow = args.flow_seconds
    results_file = ROOT / "bench" / "results.json"
    if flow is None and results_file.exists():
        flow = json.loads(results_file.read_text()).get("flow_seconds")
    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="ctflows-bench-model-") as tmp:
        model_dir = save_benchmark_model(params, args.rows, Path(tmp))
        result = bench_image(params, model_dir, args.runs, flow)
    print(json.dumps(result, indent=2))
    share = result.get("image_share_of_flow")
    infra_ok = result["infra_gate_seconds"] <= TARGET_INFRA_SECONDS
    return 0 if (share is None or share <= TARGET_SHARE) and infra_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

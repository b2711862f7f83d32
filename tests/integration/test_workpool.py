"""Flow runs as Kubernetes Jobs: the Job Prefect's Kubernetes worker would create, for real.

The work pool is created on the real Prefect server with the committed base job template, the
deployments with `prefect deploy --all`, and each Job is rendered by prefect-kubernetes' own job
configuration, then validated against the Kubernetes schemas. One Job's container command is run
as the pod would run it, and must execute the deployment's flow with the run's parameters.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.workpool import PREFECT_FILE, TEMPLATE_FILE, render_files, render_job
from tasks.config import load_params

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def kubernetes_pool(prefect_api: str) -> str:
    """The committed template as a real Kubernetes work pool, the deployments on it."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    pool = load_params(ROOT / "params.yaml").workpool.name
    _cli(
        [
            "work-pool",
            "create",
            pool,
            "--type",
            "kubernetes",
            "--base-job-template",
            str(TEMPLATE_FILE),
            "--overwrite",
        ],
        env,
    )
    _cli(["deploy", "--all", "--prefect-file", str(PREFECT_FILE.relative_to(ROOT))], env)
    return pool


def test_committed_work_pool_files_match_params():
    for path, text in render_files(str(ROOT / "params.yaml")).items():
        assert path.read_text() == text, f"{path} is stale: run python -m deployments.workpool"


def test_worker_renders_a_valid_job_for_every_deployment(kubernetes_pool):
    import kubernetes_validate
    from prefect.client.orchestration import get_client

    params = load_params(ROOT / "params.yaml")
    project = yaml.safe_load(PREFECT_FILE.read_text())
    with get_client(sync_client=True) as client:
        for entry in project["deployments"]:
            deployment = next(
                d
                for d in client.read_deployments()
                if d.name == entry["name"] and d.entrypoint == entry["entrypoint"]
            )
            assert deployment.work_pool_name == kubernetes_pool
            schema = deployment.parameter_openapi_schema or {}
            required = {  # e.g. promote/<model>'s version: what a person would pass
                name: "1" for name in schema.get("required", []) if name not in entry["parameters"]
            }
            flow_run = client.create_flow_run_from_deployment(
                deployment.id, parameters={**entry["parameters"], **required}
            )
            job = render_job(kubernetes_pool, flow_run.id)
            # prefect-kubernetes requires parallelism/completions in the pod spec too, where
            # the API server drops them as unknown fields: everything else must be valid.
            checked = copy.deepcopy(job)
            for key in ("parallelism", "completions"):
                assert checked["spec"][key] == 1
                del checked["spec"]["template"]["spec"][key]
            kubernetes_validate.validate(checked, "1.31", strict=True)

            pod = job["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert job["metadata"]["namespace"] == params.workpool.namespace
            assert pod["serviceAccountName"] == params.workpool.service_account
            assert container["image"] == params.workpool.image
            assert container["args"] == ["prefect", "flow-run", "execute"]
            assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
            assert env["PREFECT_API_URL"]
            assert container["resources"]["limits"]["memory"] == (
                params.workpool.resources.memory_limit
            )
            assert [s["secretRef"]["name"] for s in container["envFrom"]] == (
                params.workpool.secrets
            )
            client.delete_flow_run(flow_run.id)


def test_the_jobs_command_runs_the_deployments_flow_with_the_runs_parameters(
    kubernetes_pool, workspace
):
    """What the pod does, minus the image: the container's args, with the Job's environment."""
    from prefect.client.orchestration import get_client

    rev = workspace.land_day(1, 4000)
    parameters = {
        "rev": rev,
        "repo": str(workspace.data_repo),
        "params_file": str(workspace.params_file),
        "dry_run": True,
    }
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("continuous-training/churn-classifier-manual")
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        job = render_job(kubernetes_pool, flow_run.id)
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {
            **os.environ,
            **{e["name"]: e["value"] for e in container["env"] if "value" in e},
            "CTFLOWS_HOME": str(ROOT),  # the flow image sets it (deployments/flow/Dockerfile)
            "PYTHONPATH": str(ROOT),
        }
        args = container["args"]
        done = subprocess.run(
            [str(Path(sys.executable).parent / args[0]), *args[1:]],
            cwd=workspace.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        finished = client.read_flow_run(flow_run.id)
        assert finished.state is not None and finished.state.is_completed()
        assert finished.parameters["rev"] == rev
    # The flow ran on the workspace's data and told Slack its decision (dry run: nothing shipped).
    texts = workspace.slack.texts()
    assert len(texts) == 1 and params_model_name(workspace) in texts[0]


def params_model_name(workspace) -> str:
    return workspace.params.registry.model_name


@pytest.fixture(scope="module")
def flow_image() -> str:
    """deployments/flow/Dockerfile built as `make flow-image` builds it (on an mmdebstrap
    bookworm; minutes the first time, then found in podman's store)."""
    from tasks.containers import Podman
    from tasks.serving_base import build_base

    built = build_base(
        Podman(),
        bootstrap="bookworm",
        dockerfile=Path("deployments/flow/Dockerfile"),
        name="localhost/ctflows-flow",
    )
    return built.local


def test_the_job_runs_one_flow_run_inside_the_flow_image(kubernetes_pool, workspace, flow_image):
    """What the pod does, with the image: the Job's container args and environment, run by
    podman in the flow image against the test's Prefect server, MLflow store and data."""
    from prefect.client.orchestration import get_client

    from tasks.containers import ULIMITS, require
    from tests.helpers import store

    raw = yaml.safe_load(workspace.params_file.read_text())
    raw["validate"]["suite"] = "/opt/ctflows/expectations/churn_batch.json"  # the image's own
    workspace.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    rev = workspace.land_day(1, 4000)
    parameters = {
        "rev": rev,
        "repo": str(workspace.data_repo),
        "params_file": str(workspace.params_file),
        "dry_run": True,
    }
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("continuous-training/churn-classifier-manual")
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        job = render_job(kubernetes_pool, flow_run.id)
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env["CTFLOWS_SLACK_WEBHOOK_URL"] = workspace.slack.url  # the Job's secret, here
        args = ["run", "--rm", "--runtime", require("runc"), *ULIMITS, "--network", "host"]
        # the data repository, params and MLflow store at the same paths inside; as root,
        # since git refuses a repository another user owns (a pod clones its own)
        args += ["--user", "0", "--volume", f"{workspace.root}:{workspace.root}"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        done = subprocess.run(
            [require("podman"), *args, flow_image, *container["args"]],
            capture_output=True,
            text=True,
            timeout=900,
            env={"PATH": os.environ["PATH"]},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        finished = client.read_flow_run(flow_run.id)
        assert finished.state is not None and finished.state.is_completed()
    runs = store(workspace.params).search_runs(
        [e.experiment_id for e in store(workspace.params).search_experiments()]
    )
    assert any(r.data.tags.get("ct.data_md5") for r in runs), "no training run in MLflow"

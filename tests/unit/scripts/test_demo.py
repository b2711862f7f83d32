from scripts.demo import dry_run_params
from tasks.config import load_params
from tasks.deploy import resolve_mode
from tests.helpers import write_params


def test_demo_never_touches_a_cluster_unless_told(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    source = write_params(
        tmp_path / "project",
        deploy={"target": "cluster", "kubeconfig": str(kubeconfig), "context": "prod"},
    )
    assert resolve_mode(load_params(source).deploy) == "cluster"
    copy = load_params(dry_run_params(source, tmp_path / "state" / "demo" / "params.yaml"))
    original = load_params(source)
    assert resolve_mode(copy.deploy) == "dry-run"
    # the same project otherwise: same state, suite and data
    assert copy.state_dir == original.state_dir
    assert copy.validate_.suite == original.validate_.suite
    assert copy.data.repo == original.data.repo
    assert copy.params_hash() == original.params_hash()

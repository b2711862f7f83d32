from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, load_params
from tests.helpers import ROOT, write_params


def test_repo_params_load_with_paths_resolved_against_the_file():
    params = load_params(ROOT / "params.yaml")
    assert params.state_dir == ROOT / ".ctflows"
    assert params.validate_.suite.is_file()
    assert len(params.data.features) >= 15
    assert params.data.sensitive_column not in params.data.features


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("train", {"n_jobz": 2}, "train.n_jobz"),
        ("gates", {"primary_metric": "auc"}, "gates.primary_metric"),
        ("gates", {"minimums": {"precision": 0.5}}, "gates.minimums.precision"),
        ("deploy", {"image_template": "repo/model:{verison}"}, "deploy.image_template"),
        ("deploy", {"image_template": "repo/model:latest"}, "deploy.image_template"),
        ("data", {"holdout_fraction": 1.5}, "data.holdout_fraction"),
        ("data", {"categorical_features": ["tenure_months"]}, "data"),
        ("workpool", {"image": "registry.example.com/flow:latest"}, "workpool.image"),
        ("workpool", {"resources": {"memory_limit": "4 GB"}}, "workpool.resources.memory_limit"),
    ],
)
def test_invalid_params_name_the_offending_key(tmp_path, section, values, named):
    path = write_params(tmp_path, **{section: values})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert named in str(err.value)


def test_missing_and_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_params_hash_follows_training_params_not_data_location(tmp_path):
    base = load_params(write_params(tmp_path / "a")).params_hash()
    moved = load_params(write_params(tmp_path / "b", data={"rev": "main", "repo": "/x"}))
    retuned = load_params(write_params(tmp_path / "c", train={"seed": 1}))
    assert moved.params_hash() == base
    assert retuned.params_hash() != base


def test_unknown_top_level_section_is_rejected(tmp_path):
    path = write_params(tmp_path)
    raw = yaml.safe_load(Path(path).read_text())
    raw["trian"] = {}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="trian"):
        load_params(path)


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        # used only later, or by another process: found at load all the same
        ("triggers", {"schedule": {"cron": "61 3 * * 1"}}, "triggers.schedule.cron"),
        ("triggers", {"schedule": {"cron": "0 3 * * 8"}}, "triggers.schedule.cron"),
        ("drift", {"schedule": {"cron": "0 6 * * *", "timezone": "Mars/Base"}}, "drift.schedule"),
        ("triggers", {"event": "landed"}, "triggers.event"),
        ("drift", {"event": ""}, "drift.event"),
        ("triggers", {"webhook": {"secret_env": "MY SECRET"}}, "triggers.webhook.secret_env"),
        ("notify", {"webhook_env": "1SLACK"}, "notify.webhook_env"),
        ("notify", {"secret_block": "Slack Hook"}, "notify.secret_block"),
        ("mlflow", {"tracking_uri": "mlfow.example.com:5000"}, "mlflow.tracking_uri"),
        ("mlflow", {"tracking_uri": "http://"}, "mlflow.tracking_uri"),
        ("mlflow", {"tracking_uri": "http://host:port"}, "mlflow.tracking_uri"),
        ("registry", {"alias": "champion model"}, "registry.alias"),
        ("registry", {"alias": "v3"}, "registry.alias"),
        ("deploy", {"namespace": "CTFlows"}, "deploy.namespace"),
        ("deploy", {"container": "model_server"}, "deploy.container"),
        ("deploy", {"deployment": "churn model"}, "deploy.deployment"),
        ("timeouts", {"mlflow": 0}, "timeouts.mlflow"),
        ("timeouts", {"mlflow_retries": 50}, "timeouts.mlflow_retries"),
    ],
)
def test_values_used_later_are_validated_at_load(tmp_path, section, values, named):
    path = write_params(tmp_path, **{section: values})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert named in str(err.value)


def test_a_bad_tracking_uri_is_named_without_its_password(tmp_path):
    path = write_params(tmp_path, mlflow={"tracking_uri": "postgres ql://ml:hunter2@db/mlflow"})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "mlflow.tracking_uri" in str(err.value) and "hunter2" not in str(err.value)


def test_state_dir_is_the_projects_wherever_the_params_file_is(tmp_path, monkeypatch):
    """A params file elsewhere must not create a second MLflow store next to itself."""
    path = write_params(tmp_path / "elsewhere", project={"state_dir": ".ctflows"})
    monkeypatch.delenv("CTFLOWS_HOME", raising=False)
    assert load_params(path).state_dir == ROOT / ".ctflows"
    monkeypatch.setenv("CTFLOWS_HOME", str(tmp_path / "home"))
    assert load_params(path).state_dir == tmp_path / "home" / ".ctflows"
    absolute = write_params(tmp_path / "abs", project={"state_dir": str(tmp_path / "s")})
    assert load_params(absolute).state_dir == tmp_path / "s"

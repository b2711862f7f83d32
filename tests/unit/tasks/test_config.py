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

"""Reading a params file within bounds: what `extends:` may name, how far YAML may expand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import ConfigError, load_params
from tasks.config.reading import MAX_NODES
from tests.helpers import write_params


def _extending(tmp_path: Path, target: str) -> Path:
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {target}\ntrain: {{seed: 3}}\n")
    return child


def test_extends_naming_a_folder_is_a_config_error(tmp_path):
    (tmp_path / "defaults").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        load_params(_extending(tmp_path, "defaults"))


def test_extends_naming_a_device_is_refused_without_reading_it(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        load_params(_extending(tmp_path, "/dev/zero"))


def test_a_params_file_over_the_size_bound_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("data:\n  note: '" + "x" * (1 << 21) + "'\n")
    with pytest.raises(ConfigError, match="over 1048576 bytes"):
        load_params(_extending(tmp_path, "big.yaml"))


def _bomb(levels: int) -> str:
    lines = ["    l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"    l{i}: &l{i} [{refs}]")
    return "\n".join(lines)


def test_a_yaml_alias_bomb_is_refused_naming_the_key(tmp_path):
    path = write_params(tmp_path)
    text = path.read_text().replace(
        "  hyperparameters:\n", "  hyperparameters:\n" + _bomb(9) + "\n", 1
    )
    assert text != path.read_text()
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert "train.hyperparameters.l" in message and f"more than {MAX_NODES} values" in message


def test_aliases_within_the_bound_still_load(tmp_path):
    path = write_params(tmp_path)
    text = path.read_text().replace(
        "  hyperparameters:\n", "  hyperparameters:\n" + _bomb(2) + "\n", 1
    )
    path.write_text(text)
    params = load_params(path)
    assert len(params.train.hyperparameters["l1"]) == 9
    assert params.params_hash()


def test_nesting_past_the_depth_bound_is_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="deeper than"):
        load_params(deep)

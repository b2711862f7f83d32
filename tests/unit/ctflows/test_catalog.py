import pytest
import yaml

from ctflows.catalog import UnknownModel, discover, find, model_for_data_path
from tasks.config import ConfigError
from tests.helpers import write_params


def declare(root, name, **sections):
    folder = root / "models.d" / name
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(
        yaml.safe_dump({"extends": "../../params.yaml", **sections}, sort_keys=False)
    )
    return folder / "params.yaml"


def test_one_model_without_models_d(tmp_path):
    write_params(tmp_path)
    (only,) = discover(tmp_path)
    assert only.name == "churn-classifier" and only.params_file == tmp_path / "params.yaml"


def test_declared_models_share_defaults_and_keep_their_own(tmp_path):
    write_params(tmp_path)
    declare(
        tmp_path,
        "churn",
        registry={"model_name": "churn"},
        deploy={"deployment": "churn-model"},
    )
    declare(
        tmp_path,
        "upsell",
        data={"path": "data/upsell.parquet"},
        validate={"suite": "suite.json"},
        registry={"model_name": "upsell"},
        deploy={"deployment": "upsell-model"},
        train={"hyperparameters": {"num_leaves": 7}},
    )
    models = discover(tmp_path)
    assert [m.name for m in models] == ["churn", "upsell"]
    upsell = find(tmp_path, "upsell").params()
    assert upsell.registry.model_name == "upsell"
    assert upsell.validate_.suite == tmp_path / "models.d" / "upsell" / "suite.json"
    assert upsell.train.hyperparameters["num_leaves"] == 7
    assert upsell.train.hyperparameters["learning_rate"] == 0.05  # merged from the root
    assert upsell.data.label == "churned"
    assert upsell.state_dir == tmp_path / "state"  # one store for the installation
    assert model_for_data_path(models, "data/upsell.parquet").name == "upsell"
    assert model_for_data_path(models, "data/batch.parquet").name == "churn"
    assert model_for_data_path(models, "data/other.parquet") is None


def test_unknown_model_lists_the_known_ones(tmp_path):
    write_params(tmp_path)
    with pytest.raises(UnknownModel, match="known models: churn-classifier"):
        find(tmp_path, "fraud")


def test_two_models_cannot_share_a_registry_name(tmp_path):
    write_params(tmp_path)
    declare(tmp_path, "a", deploy={"deployment": "a"})
    declare(tmp_path, "b", deploy={"deployment": "b"})
    with pytest.raises(ConfigError, match=r"share registry\.model_name"):
        discover(tmp_path)


def test_bad_folder_name_and_extends_loop(tmp_path):
    write_params(tmp_path)
    declare(tmp_path, "Bad_Name", registry={"model_name": "x"})
    with pytest.raises(ConfigError, match="lowercase"):
        discover(tmp_path)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    from tasks.config import load_params

    with pytest.raises(ConfigError, match="loops"):
        load_params(loop)


@pytest.mark.parametrize(("canary", "plain"), [("a", "b"), ("b", "a")])
def test_a_canary_deployment_may_not_be_another_models_deployment(tmp_path, canary, plain):
    """A canary rollout patches `<deployment>-canary`: another model's pods, if it is named so
    (in either order of the folders)."""
    write_params(tmp_path)
    declare(
        tmp_path,
        canary,
        registry={"model_name": canary},
        deploy={"deployment": "churn", "strategy": "canary"},
    )
    declare(tmp_path, plain, registry={"model_name": plain}, deploy={"deployment": "churn-canary"})
    with pytest.raises(ConfigError) as err:
        discover(tmp_path)
    message = str(err.value)
    assert "'ctflows/churn-canary'" in message and "deploy.canary.suffix" in message
    assert f"{canary}'s deploy.deployment + deploy.canary.suffix" in message
    assert f"{plain}'s deploy.deployment" in message


def test_a_canary_of_its_own_name_space_is_accepted(tmp_path):
    write_params(tmp_path)
    canary = {"deployment": "churn", "strategy": "canary"}
    declare(tmp_path, "a", registry={"model_name": "a"}, deploy=canary)
    declare(tmp_path, "b", registry={"model_name": "b"}, deploy={"deployment": "churn-blue"})
    assert [m.name for m in discover(tmp_path)] == ["a", "b"]

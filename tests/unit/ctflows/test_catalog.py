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
    (bad,) = discover(tmp_path)  # reported with its error, not raised for every model
    assert "lowercase" in bad.error
    with pytest.raises(ConfigError, match="lowercase"):
        bad.params()
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


def test_one_invalid_overlay_is_reported_and_the_others_keep_working(tmp_path):
    from ctflows.catalog import working
    from deployments.definitions import project_specs
    from deployments.receiver import model_routes

    write_params(tmp_path)
    declare(
        tmp_path, "churn", registry={"model_name": "churn"}, deploy={"deployment": "churn-model"}
    )
    declare(
        tmp_path,
        "wine",
        registry={"model_name": "wine"},
        deploy={"deployment": "wine-model"},
        train={"hyperparameterz": {}},  # a typo
    )
    models = {m.name: m for m in discover(tmp_path)}
    assert models["churn"].error is None
    assert "train.hyperparameterz" in models["wine"].error
    assert [m.name for m in working(list(models.values()))] == ["churn"]
    assert find(tmp_path, "churn").params().registry.model_name == "churn"
    with pytest.raises(ConfigError, match="hyperparameterz"):
        find(tmp_path, "wine").params()
    root = tmp_path / "params.yaml"
    assert {s.name.split("-")[0] for s in project_specs(root)} <= {"churn"}
    assert [r.model for r in model_routes(str(root))] == ["churn"]


def test_the_cli_lists_a_broken_model_with_its_error_and_shows_the_others(tmp_path, capsys):
    import json

    from ctflows.cli import main

    write_params(tmp_path, mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    declare(
        tmp_path, "churn", registry={"model_name": "churn"}, deploy={"deployment": "churn-model"}
    )
    declare(tmp_path, "wine", registry={"model_name": "wine"}, deploy={"deplyment": "x"})
    assert main(["models", "--project", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "churn" in out and "wine" in out and "deploy.deplyment" in out
    assert main(["status", "wine", "--project", str(tmp_path)]) == 2
    assert "deploy.deplyment" in capsys.readouterr().err
    code = main(["status", "--project", str(tmp_path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 2
    assert [p.get("model") for p in payload] == ["churn", "wine"]
    assert "deploy.deplyment" in payload[1]["error"]

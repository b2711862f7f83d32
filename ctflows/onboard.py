"""`ctflows init MODEL --from PATH`: a new model from a trusted batch, ready to run.

Writes models.d/MODEL/suite.json (Great Expectations 1.x) and models.d/MODEL/params.yaml
(``extends`` the project's params.yaml: the columns, the task and an estimator for it, and a
data section that runs as written) only once both are complete and the batch passes its own
suite. The batch is placed in a git+DVC data repository (the project's, or ``--repo``,
created with ``--create-repo``) as Parquet, DVC-added, committed and pushed. In a project whose
only model is the root params.yaml, that model is kept: models.d/<its name>/params.yaml
(``extends`` the root, nothing else) is written alongside, so it stays managed under its name.
Anything that can be refused is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctflows.catalog import MODELS_DIR, check_name, discover
from ctflows.datarepo import check_target, place
from ctflows.labels import DEFAULT_ESTIMATOR
from ctflows.operate import Refused
from ctflows.profile import Profile, profile_frame, read_trusted
from tasks.config import ConfigError, load_params, read_raw_params
from tasks.config.stages import estimator_problem


@dataclass(frozen=True)
class Written:
    params_file: str
    suite_file: str
    columns: int
    expectations: int
    numeric_features: list[str]
    categorical_features: list[str]
    ignored: dict[str, str]
    task: str = "binary"
    estimator: str = ""
    data_repo: str = ""
    data_path: str = ""
    data_rev: str = ""
    data_md5: str = ""
    notes: list[str] = field(default_factory=list)
    kept: str | None = None  # the root model, now declared in models.d/ too


def _repo_setting(repo: Path, folder: Path) -> str:
    """``data.repo`` as the overlay says it: relative to its folder inside the project."""
    try:
        return (
            os.path.relpath(repo, folder) if repo.is_relative_to(folder.parents[1]) else str(repo)
        )
    except ValueError:
        return str(repo)


def render_params(
    model: str, data: dict[str, object], profile: Profile, train: dict[str, object]
) -> str:
    overlay = {
        "extends": "../../params.yaml",
        "data": {
            **data,
            "label": profile.label,
            "id_column": profile.id_column,
            "timestamp_column": profile.timestamp_column,
            "sensitive_column": None,  # not inherited: the project's may not be in this data
            "numeric_features": profile.numeric,
            "categorical_features": profile.categorical,
        },
        "validate": {"suite": "suite.json"},
        **({"train": train} if train else {}),
        "gates": {"fairness": {"enabled": False}},
        "registry": {"model_name": model},
        "deploy": {"deployment": f"{model}-model"},
    }
    header = (
        f"# Model `{model}` ({profile.task}): profiled by `ctflows init` from a trusted batch. "
        "REVIEW before use.\n"
        "# Only what differs from the project's params.yaml (extends). Gate values left out\n"
        "# follow the task (README: task-aware defaults). Set here, per model: train\n"
        "#   (estimator, hyperparameters), gates (fairness is off until you name\n"
        "#   data.sensitive_column), deploy (namespace, container, image),\n"
        "#   notify.webhook_env (this model's Slack channel).\n"
    )
    if profile.ignored:
        header += (
            "# Left out of the features: "
            + ", ".join(f"{c} ({why})" for c, why in profile.ignored.items())
            + "\n"
        )
    for note in profile.notes:
        header += f"# {note}\n"
    return header + yaml.safe_dump(overlay, sort_keys=False)


def _train_section(root_train: dict[str, object], task: str) -> dict[str, object]:
    """What the overlay says of training: the task, and an estimator for it when the
    project's does not do that task (its hyperparameters are then not inherited)."""
    out: dict[str, object] = {}
    if task != root_train.get("task", "binary"):
        out["task"] = task
    estimator = str(root_train.get("estimator", "lightgbm.LGBMClassifier"))
    if estimator_problem(estimator, task, {}) is not None:
        out["estimator"] = chosen = DEFAULT_ESTIMATOR[task]
        if chosen.startswith("lightgbm."):
            out["hyperparameters"] = {"verbose": -1}
    return out


def init_model(
    project: Path,
    model: str,
    source: Path,
    label: str | None = None,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    margin: float = 0.1,
    task: str | None = None,
    repo: Path | None = None,
    path: str | None = None,
    create_repo: bool = False,
) -> Written:
    from tasks.validate import validate_batch

    project = project.resolve()
    check_name(model)
    if not (project / "params.yaml").is_file():
        raise Refused(f"{project} has no params.yaml: run from the project root or pass --project")
    target = project / MODELS_DIR / model
    if target.exists():
        raise Refused(f"{target} already exists; remove it or pick another name")
    before = discover(project)
    keep = None
    if before and before[0].params_file == project / "params.yaml":
        keep = before[0].name  # the root model: declared in models.d/ too, or it is dropped
        if keep == model:
            raise Refused(
                f"{model!r} is the project's root model (params.yaml registry.model_name): "
                "pick another name for the new model"
            )
    df = read_trusted(source)
    profile = profile_frame(df, label, id_column, timestamp_column, margin, task)
    data_repo = (repo or project).resolve()
    data_path = path or f"data/{model}.parquet"
    check_target(data_repo, data_path, create_repo)

    root_raw, _ = read_raw_params(project / "params.yaml")
    train = _train_section(dict(root_raw.get("train") or {}), profile.task)
    data: dict[str, object] = {
        "repo": _repo_setting(data_repo, target),
        "path": data_path,
        "rev": "HEAD",
    }
    suite = {
        "name": f"{model}_batch",
        "meta": {"notes": f"Profiled by `ctflows init` from {source} ({len(df)} rows). Review."},
        "expectations": profile.expectations,
    }
    with tempfile.TemporaryDirectory(dir=project) as scratch:
        draft = Path(scratch) / model
        draft.mkdir()
        (draft / "suite.json").write_text(json.dumps(suite, indent=1, default=str) + "\n")
        text = render_params(model, data, profile, train)
        # the draft sits one level deeper than models.d/<model>: point extends at the root
        (draft / "params.yaml").write_text(
            text.replace("extends: ../../params.yaml", f"extends: {project / 'params.yaml'}")
        )
        try:
            params = load_params(draft / "params.yaml")
        except ConfigError as exc:
            raise Refused(f"the profiled params do not validate: {exc}") from exc
        result = validate_batch(df, params)
        if not result.success:
            raise Refused(f"the batch fails its own profiled suite: {result}")
        placed = place(
            df, data_repo, data_path, create_repo, f"ctflows init {model}: first trusted batch"
        )
        (draft / "params.yaml").write_text(text)
        target.parent.mkdir(exist_ok=True)
        if keep is not None:
            (target.parent / keep).mkdir()
            (target.parent / keep / "params.yaml").write_text(
                f"# Model `{keep}`: the project's params.yaml, as it was the only model before\n"
                f"# `ctflows init {model}` declared models.d/. Add what differs for it here.\n"
                "extends: ../../params.yaml\n"
            )
        shutil.move(str(draft), str(target))
    estimator = str(train.get("estimator") or params.train.estimator)
    return Written(
        str(target / "params.yaml"),
        str(target / "suite.json"),
        len(df.columns),
        len(profile.expectations),
        profile.numeric,
        profile.categorical,
        profile.ignored,
        profile.task,
        estimator,
        str(placed.repo),
        placed.path,
        placed.rev,
        placed.md5,
        list(profile.notes),
        keep,
    )

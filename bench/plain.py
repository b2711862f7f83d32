"""The baseline of `make bench`: the same compute as a served run, as a plain cold script.

    python -m bench.plain BATCH.parquet --params params.yaml [--champion M.txt] [--save M.txt]

Started as a fresh process, like a served flow run: interpreter start and imports count.
Reads the batch, validates it with the same Great Expectations suite (one ephemeral context,
the whole suite in one call), splits off the same holdout, fits LightGBM with the same
hyperparameters on pandas categories, and scores the candidate and the champion on the
holdout. No Prefect, MLflow, DVC or ctflows code is imported: this is what the work costs
without orchestration, tracking or versioning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=Path)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--champion", type=Path, help="LightGBM model file of the champion")
    parser.add_argument("--save", type=Path, help="write the fitted model here")
    args = parser.parse_args(argv)
    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = round(now - mark, 3)
        mark = now

    import great_expectations as gx
    import lightgbm
    import numpy as np
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from sklearn.metrics import roc_auc_score

    lap("imports")
    params = yaml.safe_load(args.params.read_text())
    data, train = params["data"], params["train"]
    df = pd.read_parquet(args.batch)
    lap("read")

    spec = json.loads(Path(params["validate"]["suite"]).read_text())
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("plain")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"])
    if not batch.validate(suite, result_format="BOOLEAN_ONLY").success:
        print("validation failed", file=sys.stderr)
        return 1
    lap("validate")

    key = pd.util.hash_pandas_object(
        df[data["id_column"]], index=False, hash_key=f"{data['split_seed']:016d}"[-16:]
    )
    holdout = key.to_numpy() < np.uint64(int(data["holdout_fraction"] * 2**64))
    features = data["numeric_features"] + data["categorical_features"]
    x = df[features].copy()
    for column in data["categorical_features"]:
        x[column] = x[column].astype("category")
    y = df[data["label"]].to_numpy()
    model = lightgbm.LGBMClassifier(
        **train["hyperparameters"], random_state=train["seed"], n_jobs=train["n_jobs"]
    )
    model.fit(x[~holdout], y[~holdout])
    lap("fit")

    candidate = model.predict_proba(x[holdout])
    scores = {"candidate": roc_auc_score(y[holdout], candidate[:, 1])}  # type: ignore[call-overload]
    if args.champion:
        champion = lightgbm.Booster(model_file=str(args.champion))
        scores["champion"] = roc_auc_score(y[holdout], champion.predict(x[holdout]))
    lap("score")
    if args.save:
        model.booster_.save_model(str(args.save))
    print(json.dumps({"stages": stages, "roc_auc": scores, "rows": len(df)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

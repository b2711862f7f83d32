"""What a run that skips imports: started by `make bench` as a fresh process.

    python -X importtime -m bench.skipcheck --rev REV --repo REPO --params PARAMS

Runs `continuous-training` on a data version that is already decided (so it must skip) and
prints, as JSON, which heavy libraries ended up imported. A skipped run should touch neither
Great Expectations nor LightGBM (nor scikit-learn, DVC's repo machinery or matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys

HEAVY = (
    "great_expectations",
    "lightgbm",
    "sklearn",
    "xgboost",
    "matplotlib",
    "dvc",
    "mlflow",
    "kubernetes",
    "pandas",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--params", required=True)
    args = parser.parse_args(argv)
    from flows.continuous_training import continuous_training

    outcome = continuous_training(rev=args.rev, repo=args.repo, params_file=args.params)
    loaded = [name for name in HEAVY if name in sys.modules]
    print(json.dumps({"kind": outcome.kind, "imported": loaded}))
    return 0 if outcome.kind == "skipped" else 1


def import_seconds(stderr: str, names: tuple[str, ...] = HEAVY) -> dict[str, float]:
    """Cumulative import seconds of each top-level package in ``-X importtime`` output."""
    seconds: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if name in names:
            seconds[name] = seconds.get(name, 0.0) + int(parts[1]) / 1e6
    return {k: round(v, 3) for k, v in seconds.items()}


if __name__ == "__main__":
    sys.exit(main())

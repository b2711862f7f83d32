"""`make bench`: speed targets of ctflows, measured in one warm process (as a served deployment).

- flow: the `continuous-training` flow on a 200,000-row batch (pull, validate, train, log to
  MLflow, score against the champion, promote, deploy dry run, notify), per run;
- plain: the same compute without orchestration, tracking or versioning (read parquet, validate
  with the same GX suite, fit, score candidate and champion), per run;
- rerun: the flow again on a data version it has already decided (same data, params, code).

Targets: flow / plain <= 1.3 and rerun / flow <= 0.10. Writes bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn: Callable[[int], object], runs: int) -> tuple[float, list[float]]:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (median kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)

    from deployments.server import prefect_server
    from tasks.config import load_params
    from tasks.data import init_data_repo, make_batch, publish_batch, read_batch, split_holdout

    state = ROOT / ".ctflows" / "bench"
    if state.exists():
        import shutil

        shutil.rmtree(state)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["state_dir"] = str(state / "state")
    raw["deploy"]["target"] = "dry-run"
    raw["validate"]["suite"] = str(ROOT / raw["validate"]["suite"])
    params_file = state / "params.yaml"
    state.mkdir(parents=True)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(params_file)

    data_repo = state / "data-repo"
    init_data_repo(data_repo, state / "dvc-remote")
    days = range(1, 2 * args.runs + 3)
    print(f"landing {len(days)} batches of {args.rows:,} rows ...", flush=True)
    revs = {
        d: publish_batch(data_repo, make_batch(d, args.rows), params.data.path, f"day {d}")
        for d in days
    }
    local = {d: state / f"day{d}.parquet" for d in days}
    for d in days:
        make_batch(d, args.rows).to_parquet(local[d], index=False)

    def plain(day: int, champion: object | None) -> object:
        from tasks.evaluate import compare
        from tasks.train import train_model
        from tasks.validate import validate_batch

        df = read_batch(local[day])
        if not validate_batch(df, params).success:
            raise RuntimeError("validation failed")
        train_df, holdout = split_holdout(df, params.data)
        model = train_model(train_df, params)
        compare(model, champion, holdout, params.gates, params.data)
        return model

    logging.getLogger("prefect").setLevel(logging.WARNING)
    with prefect_server(state / "prefect"):
        from flows.continuous_training import continuous_training

        def flow(day: int) -> None:
            outcome = continuous_training(
                rev=revs[day], repo=str(data_repo), params_file=str(params_file)
            )
            if outcome.kind not in {"promoted", "rejected"}:
                raise RuntimeError(f"expected a full run, got {outcome.line()}")

        print("warming up ...", flush=True)
        flow(days[0])
        champion = plain(days[0], None)
        print(f"timing {args.runs} runs of each ...", flush=True)
        plain_s, plain_all = _median_time(lambda i: plain(days[1 + i], champion), args.runs)
        flow_s, flow_all = _median_time(lambda i: flow(days[1 + args.runs + i]), args.runs)

        def rerun(i: int) -> None:
            outcome = continuous_training(
                rev=revs[days[1 + args.runs + i]],
                repo=str(data_repo),
                params_file=str(params_file),
            )
            if outcome.kind != "skipped":
                raise RuntimeError(f"an unchanged rerun was not skipped: {outcome.line()}")

        rerun_s, rerun_all = _median_time(lambda i: rerun(i % args.runs), 3 * args.runs)

    results = {
        "rows": args.rows,
        "runs": args.runs,
        "flow_seconds": round(flow_s, 3),
        "plain_seconds": round(plain_s, 3),
        "ratio": round(flow_s / plain_s, 3),
        "rerun_seconds": round(rerun_s, 3),
        "rerun_ratio": round(rerun_s / flow_s, 3),
        "targets": {"ratio": 1.3, "rerun_ratio": 0.10},
        "all_seconds": {
            "flow": [round(t, 3) for t in flow_all],
            "plain": [round(t, 3) for t in plain_all],
            "rerun": [round(t, 3) for t in rerun_all],
        },
        "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    update_readme(ROOT / "README.md", table(results))
    ok = results["ratio"] <= 1.3 and results["rerun_ratio"] <= 0.10
    print(f"\n{'all targets met' if ok else 'TARGET MISSED'}; wrote {args.out}")
    return 0 if ok else 1


def update_readme(readme: Path, text: str) -> None:
    """Keep the README's benchmark table equal to the last measurement."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    content = readme.read_text()
    if start in content and end in content:
        head, rest = content.split(start, 1)
        readme.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def table(r: dict[str, object]) -> str:
    rows = [
        ("flow, per run", f"{r['flow_seconds']:.2f} s", ""),
        ("plain script, per run", f"{r['plain_seconds']:.2f} s", ""),
        ("flow / plain", f"{r['ratio']:.2f}", "≤ 1.30"),
        ("unchanged rerun (median of 3x runs)", f"{r['rerun_seconds']:.2f} s", ""),
        ("rerun / flow", f"{r['rerun_ratio']:.3f}", "≤ 0.10"),
    ]
    lines = [
        f"| measure ({r['rows']:,} rows, median of {r['runs']}) | value | target |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

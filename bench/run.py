"""`make bench`: ctflows' speed and memory targets, measured as users meet them.

- plain cold: the same compute as a served run as a plain script in a fresh process
  (bench/plain.py: interpreter start, imports, read, validate with the same suite, fit,
  score candidate and champion);
- served: a real Prefect server, `deployments.serve` with the signed webhook, and the
  Kubernetes API stand-in: land a data version, POST the webhook, and read back from Prefect
  when the run was Running, each task ended, the gates decided, and the rollout finished;
  then unchanged-data runs (already decided: they must skip);
- scaling: peak resident memory and time of served runs at 200k, 1M and 5M rows
  (BENCH_SCALING_ROWS="200000,1000000" to leave out 5M);
- warm: the flow called inside one warm process, labelled as such (not what served runs pay);
- gates and drift statistics on 1M rows.

A run that fails, or skips where it should have trained, stops the benchmark naming the run:
no figure is published from it. Writes bench/results.json, the README's section and
bench/scaling.png (`python -m bench.report` regenerates both from results.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.report import plot_scaling, render, update_readme
from bench.served import BenchError, RunTiming, Stack, served_stack

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results.json"
TARGETS = {
    "full_over_plain": 1.3,
    "unchanged_over_full": 0.15,
    "accepted_to_running": 1.5,
    "landed_to_rollout_over_plain": 2.0,
    "rss_over_batch": 3.0,
    "drift_seconds_1m": 5.0,
    "image_share_of_flow": 0.10,
    "infra_gate_seconds": 15.0,
    "webhook_p95_seconds": 1.0,
    "serving_log_slowdown": 0.05,
}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _median_time(fn: Callable[[int], object], runs: int) -> tuple[float, list[float]]:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def _scaling_rows() -> list[int]:
    raw = os.environ.get("BENCH_SCALING_ROWS", "200000,1000000,5000000")
    return [int(x) for x in raw.replace("_", "").split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per batch")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (median kept)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--state", type=Path, default=ROOT / ".ctflows" / "bench")
    parser.add_argument("--plain-from", type=Path, help="reuse plain_cold of this results file")
    parser.add_argument("--no-warm", action="store_true", help="skip the in-process figures")
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="skip what follows the served runs: gates and drift on 1M rows, the image, "
        "the webhook under load, serving, the monitor, Dask",
    )
    args = parser.parse_args(argv)
    state = args.state.resolve()
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    logging.getLogger("prefect").setLevel(logging.WARNING)
    try:
        results = measure(args, state)
    except BenchError as exc:
        print(f"\nNOT PUBLISHED: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    print("\n" + text)
    if args.out.resolve() == DEFAULT_OUT:  # trial runs elsewhere leave the README alone
        update_readme(ROOT / "README.md", text)
        if results.get("scaling"):
            plot_scaling(results, args.out.parent / "scaling.png")
    missed = [k for k, ok in results["met"].items() if ok is False]
    print(f"\n{'all targets met' if not missed else 'TARGETS MISSED: ' + ', '.join(missed)}")
    print(f"wrote {args.out}")
    return 0 if not missed else 1


def measure(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    from tasks.data import make_batch

    runs = args.runs
    if args.plain_from:  # a trial of the served part alone, against an earlier baseline
        plain = json.loads(args.plain_from.read_text())["plain_cold"]
    else:
        print(f"plain cold script, {runs} runs of {args.rows:,} rows ...", flush=True)
        plain = bench_plain(state / "plain", args.rows, runs)
        print(f"  median {plain['seconds']:.2f} s", flush=True)

    print("served runs: Prefect server, deployments.serve, webhook, stand-in ...", flush=True)
    with served_stack(state / "served") as stack:
        runner = _runner_kind(stack)
        first = served_full(stack, make_batch(1, args.rows), "day 1 (warm-up, first champion)")
        full: list[RunTiming] = []
        for day in range(2, runs + 2):
            full.append(served_full(stack, make_batch(day, args.rows), f"day {day}"))
        last_rev = stack.land_rev
        unchanged = [served_unchanged(stack, last_rev, i) for i in range(runs)]
        scaling = []
        for i, rows in enumerate(_scaling_rows()):
            scaling.append(served_scaling(stack, rows, 100 + i))
    del first
    served = summarize_served(full, unchanged, runner)
    results: dict[str, Any] = {
        "rows": args.rows,
        "runs": runs,
        "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
        "plain_cold": plain,
        "served": served,
        "scaling": scaling,
    }
    if not args.no_warm:
        print("warm, in one process ...", flush=True)
        results["warm"] = bench_warm(state / "warm", args.rows, runs)
    if not args.no_extras:
        from tasks.config import load_params

        params = load_params(stack.params_file)
        print("gates on a 1,000,000-row holdout ...", flush=True)
        gates_s, score_s = bench_gates(params)
        print("drift statistics on 1,000,000 rows x 20 features ...", flush=True)
        results["gates_seconds_1m"] = round(gates_s, 3)
        results["score_both_seconds_1m"] = round(score_s, 3)
        results["drift_seconds_1m"] = round(bench_drift(params), 3)
        results.update(bench_components(params, state, args.rows, runs, served["full_seconds"]))
    ratios = {
        "full_over_plain": round(served["full_seconds"] / plain["seconds"], 3),
        "unchanged_over_full": round(served["unchanged_seconds"] / served["full_seconds"], 3),
        "landed_to_rollout_over_plain": round(
            served["landed_to_rollout_seconds"] / plain["seconds"], 3
        ),
    }
    results["ratios"] = ratios
    results["targets"] = TARGETS
    results["met"] = {
        "full_over_plain": ratios["full_over_plain"] <= TARGETS["full_over_plain"],
        "unchanged_over_full": ratios["unchanged_over_full"] <= TARGETS["unchanged_over_full"],
        "accepted_to_running": served["accepted_to_running"] <= TARGETS["accepted_to_running"],
        "landed_to_rollout": ratios["landed_to_rollout_over_plain"]
        <= TARGETS["landed_to_rollout_over_plain"],
        # judged on what a run adds above the libraries it shares with the fork server
        "rss_over_batch": all(s["own_rss_over_batch"] <= TARGETS["rss_over_batch"] for s in scaling)
        if scaling
        else None,
        "drift_seconds_1m": results["drift_seconds_1m"] <= TARGETS["drift_seconds_1m"]
        if "drift_seconds_1m" in results
        else None,
        "image_share_of_flow": results["image_share_of_flow"] <= TARGETS["image_share_of_flow"]
        if "image_share_of_flow" in results
        else None,
        "infra_gate_seconds": results["infra_gate_seconds"] <= TARGETS["infra_gate_seconds"]
        if "infra_gate_seconds" in results
        else None,
        "webhook_p95": results["webhook_load"]["p95_seconds"] <= TARGETS["webhook_p95_seconds"]
        if "webhook_load" in results
        else None,
        "serving_log_slowdown": results["serving_log_slowdown"] <= TARGETS["serving_log_slowdown"]
        if "serving_log_slowdown" in results
        else None,
    }
    return results


def bench_plain(folder: Path, rows: int, runs: int) -> dict[str, Any]:
    """Seconds of bench/plain.py as a fresh process, each on a new day's batch."""
    from tasks.data import make_batch

    folder.mkdir(parents=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["validate"]["suite"] = str(ROOT / raw["validate"]["suite"])
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    champion = folder / "champion.txt"
    times: list[float] = []
    stages: list[dict[str, float]] = []
    for day in range(1, runs + 2):
        batch = folder / f"day{day}.parquet"
        make_batch(day, rows).to_parquet(batch, index=False)
        cmd = [sys.executable, "-m", "bench.plain", str(batch), "--params", str(params)]
        cmd += ["--save", str(champion)] if day == 1 else ["--champion", str(champion)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise BenchError(f"plain script failed on day {day}: {proc.stderr[-500:]}")
        if day > 1:  # day 1 trains the champion the others score against
            times.append(seconds)
            stages.append(json.loads(proc.stdout.strip().splitlines()[-1])["stages"])
    return {
        "seconds": _median(times),
        "all": [round(t, 3) for t in times],
        "stages": {k: _median([s[k] for s in stages]) for k in stages[0]},
    }


def _runner_kind(stack: Stack) -> str:
    text = stack.log.read_text(errors="replace")
    return "forkserver" if "forkserver" in text else "spawn"


def served_full(stack: Stack, df: Any, label: str) -> RunTiming:
    """Land ``df``, post the webhook, wait: the run must train and roll out."""
    rev, landed = stack.land(df, label)
    stack.land_rev = rev
    before = stack.served_image()
    stack.rss.start()
    run_id, accepted = stack.post(rev)
    state = stack.wait(run_id, 1800)
    peak = stack.rss.stop()
    timing = stack.timing(run_id, accepted, landed)
    timing.peak_rss_bytes = peak
    if state != "COMPLETED" or not timing.trained:
        what = "failed" if state != "COMPLETED" else "skipped where it should have trained"
        raise BenchError(f"served run {run_id} ({label}) {what}: state {state}; see {stack.log}")
    if not timing.promoted or stack.served_image() == before:
        raise BenchError(f"served run {run_id} ({label}) did not roll out a new image")
    print(
        f"  {label}: Running after {timing.accepted_to_running:.2f} s, "
        f"rollout {timing.landed_to_rollout or 0:.2f} s after landing, "
        f"Completed after {timing.total:.2f} s",
        flush=True,
    )
    return timing


def served_unchanged(stack: Stack, rev: str, i: int) -> RunTiming:
    """A run on data, params and code already decided: it must skip, and fast."""
    run_id, created = stack.run_manual(rev)
    state = stack.wait(run_id, 600)
    timing = stack.timing(run_id, created)
    if state != "COMPLETED" or timing.trained:
        what = "failed" if state != "COMPLETED" else "trained although nothing changed"
        raise BenchError(f"unchanged run {run_id} {what}: state {state}; see {stack.log}")
    print(f"  unchanged run {i + 1}: Completed after {timing.total:.2f} s", flush=True)
    return timing


def served_scaling(stack: Stack, rows: int, day: int) -> dict[str, Any]:
    import pandas as pd

    from tasks.data import make_batch

    print(f"scaling: served run on {rows:,} rows ...", flush=True)
    timing = served_full(stack, make_batch(day, rows), f"{rows:,} rows")
    batch = pd.read_parquet(stack.data_repo / "data" / "batch.parquet")
    size = int(batch.memory_usage(deep=True).sum())
    assert timing.peak_rss_bytes is not None
    libraries = stack.library_rss()
    own = timing.peak_rss_bytes - (libraries or 0)  # what the run adds to the shared libraries
    return {
        "rows": rows,
        "batch_bytes": size,
        "peak_rss_bytes": timing.peak_rss_bytes,
        "rss_over_batch": round(timing.peak_rss_bytes / size, 2),
        "library_rss_bytes": libraries,
        "own_rss_over_batch": round(own / size, 2),
        "seconds": round(timing.total, 3),
        "tasks": timing.tasks,
    }


def summarize_served(full: list[RunTiming], unchanged: list[RunTiming], runner: str) -> dict:
    names = sorted({name for t in full for name in t.tasks}, key=lambda n: _order(full, n))
    tasks = {n: _median([t.tasks.get(n, 0.0) for t in full]) for n in names}
    outside = [t.total - t.accepted_to_running - sum(t.tasks.values()) for t in full]
    return {
        "runner": runner,
        "full_seconds": _median([t.total for t in full]),
        "full_all": [round(t.total, 3) for t in full],
        "accepted_to_running": _median([t.accepted_to_running for t in full]),
        "accepted_to_running_all": [round(t.accepted_to_running, 3) for t in full],
        "decision_seconds": _median([t.decision or 0.0 for t in full]),
        "rollout_seconds": _median([t.rollout or 0.0 for t in full]),
        "landed_to_rollout_seconds": _median([t.landed_to_rollout or 0.0 for t in full]),
        "landed_to_rollout_all": [round(t.landed_to_rollout or 0.0, 3) for t in full],
        "tasks": tasks,
        "outside_tasks": _median(outside),
        "unchanged_seconds": _median([t.total for t in unchanged]),
        "unchanged_all": [round(t.total, 3) for t in unchanged],
        "unchanged_tasks": {
            n: _median([t.tasks.get(n, 0.0) for t in unchanged])
            for n in sorted({n for t in unchanged for n in t.tasks})
        },
        "peak_rss_bytes": max(t.peak_rss_bytes or 0 for t in full),
        "flow_runs": [t.run_id for t in full] + [t.run_id for t in unchanged],
    }


def _order(full: list[RunTiming], name: str) -> int:
    """Tasks in the order a run reaches them (their order in the recorded breakdown)."""
    order = ["setup-tracking", "recover", "resolve-data", "find-previous-run", "pull-data"]
    order += ["validate-data", "check-deployment", "train-model", "evaluate-candidate"]
    order += ["promote-model", "deploy-model", "finish-promotion", "complete-run", "notify"]
    return order.index(name) if name in order else len(order)


def bench_warm(folder: Path, rows: int, runs: int) -> dict[str, Any]:
    """The flow called in this (warm) process, the plain compute in-process, and reruns."""
    from deployments.server import prefect_server
    from tasks.config import load_params
    from tasks.data import init_data_repo, make_batch, publish_batch, read_batch, split_holdout

    folder.mkdir(parents=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["state_dir"] = str(folder / "state")
    raw["deploy"]["target"] = "dry-run"
    raw["validate"]["suite"] = str(ROOT / raw["validate"]["suite"])
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(params_file)
    data_repo = folder / "data-repo"
    init_data_repo(data_repo, folder / "dvc-remote")
    days = range(1, 2 * runs + 3)
    revs = {
        d: publish_batch(data_repo, make_batch(d, rows), params.data.path, f"d{d}") for d in days
    }
    local = {d: folder / f"day{d}.parquet" for d in days}
    for d in days:
        make_batch(d, rows).to_parquet(local[d], index=False)

    def plain(day: int, champion: Any) -> Any:
        from tasks.evaluate import compare
        from tasks.train import train_model
        from tasks.validate import validate_batch

        df = read_batch(local[day])
        if not validate_batch(df, params).success:
            raise BenchError("validation failed in the warm plain run")
        train_df, holdout = split_holdout(df, params.data)
        model = train_model(train_df, params)
        compare(model, champion, holdout, params.gates, params.data)
        return model

    with prefect_server(folder / "prefect"):
        from flows.continuous_training import continuous_training

        def flow(day: int, expect: set[str]) -> None:
            outcome = continuous_training(
                rev=revs[day], repo=str(data_repo), params_file=str(params_file)
            )
            if outcome.kind not in expect:
                raise BenchError(f"warm run on day {day}: expected {expect}, got {outcome.line()}")

        full = {"promoted", "rejected"}
        flow(days[0], full)
        champion = plain(days[0], None)
        plain_s, plain_all = _median_time(lambda i: plain(days[1 + i], champion), runs)
        flow_s, flow_all = _median_time(lambda i: flow(days[1 + runs + i], full), runs)
        rerun_s, rerun_all = _median_time(lambda i: flow(days[1 + runs + i], {"skipped"}), runs)
        skip = skip_imports(revs[days[1 + runs]], data_repo, params_file)
    return {
        "flow_seconds": round(flow_s, 3),
        "plain_seconds": round(plain_s, 3),
        "rerun_seconds": round(rerun_s, 3),
        "skip_imports": skip,
        "all": {
            "flow": [round(t, 3) for t in flow_all],
            "plain": [round(t, 3) for t in plain_all],
            "rerun": [round(t, 3) for t in rerun_all],
        },
    }


def skip_imports(rev: str, repo: Path, params_file: Path) -> dict[str, Any]:
    """Which heavy libraries an unchanged-data run imports, in a fresh process."""
    from bench.skipcheck import import_seconds

    cmd = [sys.executable, "-X", "importtime", "-m", "bench.skipcheck", "--rev", rev]
    proc = subprocess.run(
        [*cmd, "--repo", str(repo), "--params", str(params_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"the unchanged run in a fresh process did not skip: {proc.stdout[-300:]}")
    info = json.loads(lines[-1])
    return {"imported": info["imported"], "import_seconds": import_seconds(proc.stderr)}


def bench_gates(params: Any) -> tuple[float, float]:
    """Seconds of all gates on a 1M-row holdout, and of scoring both models once on it."""
    from tasks.data import make_batch, split_holdout
    from tasks.evaluate import compare
    from tasks.train import train_model

    champion = train_model(split_holdout(make_batch(101, 20_000), params.data)[0], params)
    candidate = train_model(split_holdout(make_batch(102, 100_000), params.data)[0], params)
    holdout = make_batch(103, 1_000_000)
    started = time.perf_counter()
    candidate.predict_proba(holdout)
    champion.predict_proba(holdout)
    score_s = time.perf_counter() - started
    started = time.perf_counter()
    compare(candidate, champion, holdout, params.gates, params.data)
    return time.perf_counter() - started, score_s


def bench_drift(params: Any) -> float:
    """Seconds of the drift statistics on 1M rows x 20 features (13 numeric, 7 categorical)."""
    from tasks.data import make_batch
    from tasks.drift import detect_drift

    reference, current = make_batch(201, 1_000_000), make_batch(202, 1_000_000, drift=0.3)
    for frame in (reference, current):
        frame["segment"] = frame["region"] + "/" + frame["plan_tier"]
        frame["cohort"] = (frame["tenure_months"] // 12).astype(str)
    data = params.data.model_copy(
        update={"categorical_features": [*params.data.categorical_features, "segment", "cohort"]}
    )
    assert len(data.features) == 20
    started = time.perf_counter()
    detect_drift(reference, current, data, params.drift)
    return time.perf_counter() - started


def bench_components(
    params: Any, state: Path, rows: int, runs: int, flow_seconds: float
) -> dict[str, Any]:
    """The parts users meet apart from a training run: the model image's build and push, the
    webhook receiver under load, serving with and without the inference log, the production
    monitor over a million logged predictions."""
    from bench.image import bench_image, save_benchmark_model
    from bench.serving import measure_monitor, measure_serving
    from bench.webhook_load import bench_webhook_load

    out: dict[str, Any] = {}
    print("model image: build + push to a loopback registry ...", flush=True)
    model_dir = save_benchmark_model(params, rows, state / "image-model")
    out.update(bench_image(params, model_dir, runs, flow_seconds))
    print("webhook receiver under load ...", flush=True)
    out["webhook_load"] = bench_webhook_load(state / "webhook-load")
    print("serving with the inference log on and off ...", flush=True)
    out.update(measure_serving())
    print("production monitor over 1,000,000 logged predictions ...", flush=True)
    out.update(measure_monitor())
    print("training and scoring on Dask (local engine, 1 and 2 workers, 2M rows) ...", flush=True)
    from bench.dask import bench_dask

    out["dask"] = bench_dask()
    return out


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())

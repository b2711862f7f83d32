"""`make bench`: speed targets of ctflows, measured in one warm process (as a served deployment).

- flow: the `continuous-training` flow on a 200,000-row batch (pull, validate, train, log to
  MLflow, score against the champion, promote, deploy dry run, notify), per run;
- plain: the same compute without orchestration, tracking or versioning (read parquet, validate
  with the same GX suite, fit, score candidate and champion), per run;
- rerun: the flow again on a data version it has already decided (same data, params, code).

- gates: every promotion gate (1,000 paired bootstrap resamples) on a 1,000,000-row holdout,
  against scoring both models once on it.

Targets: flow / plain <= 1.3, rerun / flow <= 0.10, gates / scoring <= 3. Writes
bench/results.json and the README's table.
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
from typing import Any

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

    print("gates on a 1,000,000-row holdout ...", flush=True)
    gates_s, score_s = bench_gates(params)
    print("drift statistics on 1,000,000 rows x 20 features ...", flush=True)
    drift_s = bench_drift(params)
    print("webhook to Running on a served deployment ...", flush=True)
    hook_s = bench_webhook(state / "hook", args.runs + 2)

    results = {
        "rows": args.rows,
        "runs": args.runs,
        "flow_seconds": round(flow_s, 3),
        "plain_seconds": round(plain_s, 3),
        "ratio": round(flow_s / plain_s, 3),
        "rerun_seconds": round(rerun_s, 3),
        "rerun_ratio": round(rerun_s / flow_s, 3),
        "gates_seconds_1m": round(gates_s, 3),
        "score_both_seconds_1m": round(score_s, 3),
        "gates_ratio": round(gates_s / score_s, 3),
        "drift_seconds_1m": round(drift_s, 3),
        "webhook_to_running_seconds_median": round(statistics.median(hook_s), 3),
        "webhook_to_running_seconds": [round(t, 3) for t in hook_s],
        "targets": {
            "ratio": 1.3,
            "rerun_ratio": 0.10,
            "gates_ratio": 3.0,
            "drift_seconds_1m": 5.0,
            "webhook_to_running_seconds_median": 3.0,
        },
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
    ok = results["ratio"] <= 1.3 and results["rerun_ratio"] <= 0.10 and results["gates_ratio"] <= 3
    print(f"\n{'all targets met' if ok else 'TARGET MISSED'}; wrote {args.out}")
    return 0 if ok else 1


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


def bench_webhook(state: Path, runs: int) -> list[float]:
    """Seconds from an accepted webhook (202) to its flow run Running, on `deployments.serve`."""
    import os
    import subprocess
    import urllib.request

    from deployments.server import free_port, prefect_server
    from deployments.webhook import sign
    from tasks.data import init_data_repo, make_batch, publish_batch

    state.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["state_dir"] = str(state / "state")
    raw["deploy"]["target"] = "dry-run"
    raw["validate"]["suite"] = str(ROOT / raw["validate"]["suite"])
    raw["data"]["repo"] = str(state / "data-repo")
    params_file = state / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    init_data_repo(state / "data-repo", state / "dvc-remote")
    secret, port = "bench-secret", free_port()
    times = []
    with prefect_server(state / "prefect") as api_url:
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PYTHONPATH": str(ROOT),
            "CTFLOWS_WEBHOOK_SECRET": secret,
        }
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deployments.serve",
                "--params",
                str(params_file),
                "--webhook-port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                _wait(
                    lambda: _exists(client, "continuous-training/churn-classifier-on-new-data"), 90
                )
                _wait(lambda: _up(f"http://127.0.0.1:{port}/health"), 30)
                for day in range(1, runs + 1):
                    rev = publish_batch(
                        state / "data-repo",
                        make_batch(day, 5_000),
                        "data/batch.parquet",
                        f"day {day}",
                    )
                    body = json.dumps({"path": "data/batch.parquet", "rev": rev}).encode()
                    stamp = str(int(time.time()))
                    req = urllib.request.Request(
                        f"http://127.0.0.1:{port}/hooks/data-landed",
                        data=body,
                        method="POST",
                        headers={
                            "X-Ctflows-Timestamp": stamp,
                            "X-Ctflows-Signature": sign(secret, stamp, body),
                            "Content-Type": "application/json",
                        },
                    )
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        run_id = json.loads(resp.read())["flow_run_id"]
                    accepted = time.perf_counter()
                    _wait(
                        lambda r=run_id: _state(client, r) in {"RUNNING", "COMPLETED", "FAILED"},
                        60,
                        step=0.02,
                    )
                    times.append(time.perf_counter() - accepted)
                    _wait(lambda r=run_id: _state(client, r) in {"COMPLETED", "FAILED"}, 300)
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    return times


def _exists(client: Any, name: str) -> bool:
    try:
        client.read_deployment_by_name(name)
        return True
    except Exception:
        return False


def _up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _state(client: Any, run_id: str) -> str:
    run = client.read_flow_run(run_id)
    return str(run.state.type.value) if run.state else ""


def _wait(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s")
        time.sleep(step)


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
        ("score both models once, 1M rows", f"{r['score_both_seconds_1m']:.2f} s", ""),
        ("all gates (1,000 paired resamples), 1M rows", f"{r['gates_seconds_1m']:.2f} s", ""),
        ("gates / scoring", f"{r['gates_ratio']:.2f}", "≤ 3.00"),
        ("drift statistics, 1M rows x 20 features", f"{r['drift_seconds_1m']:.2f} s", "≤ 5 s"),
        (
            f"accepted webhook to Running (median of {len(r['webhook_to_running_seconds'])})",
            f"{r['webhook_to_running_seconds_median']:.2f} s",
            "≤ 3 s",
        ),
    ]
    lines = [
        f"| measure ({r['rows']:,} rows, median of {r['runs']}) | value | target |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of issue 13: the inference log's cost in serving, and the monitor at scale.

- serving: the serving app under uvicorn on loopback, one process, the same requests sent to
  two apps built on the same model, one with the inference log on and one with it off,
  rounds interleaved (on, off, on, off, ...) so that machine noise hits both alike.
  Throughput (requests per second, concurrent clients) and p95 latency per request.
  Target: with the log on, at most 5% slower.
- monitor: the production monitor's analysis (read the log, parse the records, join 100,000
  labels, input and score drift, live metric with its interval) over 1,000,000 logged
  predictions.

    python -m bench.serving [--requests 2000] [--rounds 3] [--out bench/serving.json]

``measure_serving()`` and ``measure_monitor()`` return dicts for ``bench/run.py`` to merge.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_SLOWDOWN = 0.05


def _params(folder: Path) -> Any:
    from tests.helpers import small_params

    return small_params(folder)


def _saved_model(folder: Path, params: Any) -> tuple[str, Any]:
    import mlflow
    from mlflow.models import infer_signature

    from tasks.data import make_batch, split_holdout
    from tasks.train import train_model

    batch = make_batch(1, 20_000)
    model = train_model(split_holdout(batch, params.data)[0], params)
    sample = batch[params.data.features].head(50)
    path = folder / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(sample, model.predict_proba(sample)[:, 1]),
        pip_requirements=["scikit-learn", "lightgbm"],
        serialization_format="cloudpickle",
    )
    return str(path), model


@contextmanager
def _served(app: Any) -> Iterator[int]:
    import uvicorn

    from deployments.server import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def _drive(port: int, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    """Send every body once over ``clients`` keep-alive connections; wall seconds, latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    shares = [bodies[i::clients] for i in range(clients)]

    def worker(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for body in share:
            started = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"/predict answered {response.status}")
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    return time.perf_counter() - started, latencies


def measure_serving(
    requests: int = 2_000, rounds: int = 3, clients: int = 4, batch: int = 1
) -> dict[str, Any]:
    """Throughput and p95 latency of /predict with the inference log on and off."""
    from deployments.serving.app import create_app
    from deployments.serving.inference_log import LogConfig
    from tasks.data import make_batch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = _params(folder)
        uri, _ = _saved_model(folder, params)
        rows = make_batch(2, requests * batch)[params.data.features].to_dict(orient="records")
        bodies = [
            json.dumps({"records": rows[i : i + batch]}).encode()
            for i in range(0, len(rows), batch)
        ]
        apps = {
            "on": create_app(uri, False, LogConfig(url=str(folder / "log"))),
            "off": create_app(uri, False, LogConfig(enabled=False)),
        }
        results: dict[str, dict[str, list[float]]] = {k: {"rps": [], "p95_ms": []} for k in apps}
        with _served(apps["on"]) as port_on, _served(apps["off"]) as port_off:
            ports = {"on": port_on, "off": port_off}
            for name in apps:  # warm-up
                _drive(ports[name], bodies[:200], clients)
            for r in range(rounds):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    wall, latencies = _drive(ports[name], bodies, clients)
                    results[name]["rps"].append(len(bodies) / wall)
                    results[name]["p95_ms"].append(float(np.percentile(latencies, 95)) * 1000)
        log_state = apps["on"].state.inference_log
        log_state.close()
        text = apps["on"].state.telemetry.render().decode()
    rps = {k: statistics.median(v["rps"]) for k, v in results.items()}
    p95 = {k: statistics.median(v["p95_ms"]) for k, v in results.items()}
    slowdown = 1 - rps["on"] / rps["off"]
    return {
        "serving_requests": len(bodies),
        "serving_batch_size": batch,
        "serving_clients": clients,
        "serving_rounds": rounds,
        "serving_rps_log_on": round(rps["on"], 1),
        "serving_rps_log_off": round(rps["off"], 1),
        "serving_p95_ms_log_on": round(p95["on"], 2),
        "serving_p95_ms_log_off": round(p95["off"], 2),
        "serving_log_slowdown": round(slowdown, 4),
        "serving_p95_increase": round(p95["on"] / p95["off"] - 1, 4),
        "serving_log_dropped": _dropped(text),
        "serving_target_slowdown": TARGET_SLOWDOWN,
        "serving_all": results,
    }


def _dropped(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("ctflows_inference_log_dropped_records_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def write_million(url: Path, model: Any, params: Any, rows: int) -> list[str]:
    """``rows`` logged predictions of drifted traffic, in files as the serving app writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deployments.serving.inference_log import arrow_schema
    from tasks.data import make_batch

    batch = make_batch(7, rows, drift=0.5)
    scores = model.predict_proba(batch[params.data.features])[:, 1]
    features = batch[params.data.features].to_json(orient="records", lines=True).splitlines()
    ids = [f"req-{i}" for i in range(rows)]
    day = datetime(2026, 11, 20, tzinfo=UTC)
    times = [day + timedelta(seconds=i * 80_000 / rows) for i in range(rows)]
    folder = url / "day=2026-11-20" / "model_version=1"
    folder.mkdir(parents=True)
    step = 100_000
    for start in range(0, rows, step):
        end = min(rows, start + step)
        n = end - start
        table = pa.Table.from_pydict(
            {
                "prediction_id": ids[start:end],
                "request_id": ids[start:end],
                "row": [0] * n,
                "batch_size": [1] * n,
                "time": times[start:end],
                "model_name": ["churn-classifier"] * n,
                "model_version": ["1"] * n,
                "image_digest": [""] * n,
                "features": features[start:end],
                "score": scores[start:end],
                "decision": (scores[start:end] >= 0.5).astype("int8"),
            },
            schema=arrow_schema(),
        )
        pq.write_table(table, folder / f"part-{start:09d}.parquet")
    return ids


def measure_monitor(rows: int = 1_000_000) -> dict[str, Any]:
    """Seconds of the production monitor's analysis over ``rows`` logged predictions."""
    import pandas as pd

    from tasks.data import make_batch, split_holdout
    from tasks.inference_log import join_labels, read_inference_log
    from tasks.monitor import ChampionReference, analyse_window

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = _params(folder)
        _, model = _saved_model(folder, params)
        train, holdout = split_holdout(make_batch(1, 60_000), params.data)
        reference = ChampionReference(
            "churn-classifier",
            "1",
            "run",
            "md5",
            train.head(params.monitor.reference_rows),
            model.predict_proba(holdout)[:, 1],
            0.8,
            0.5,
        )
        ids = write_million(folder / "log", model, params, rows)
        labels = pd.DataFrame(
            {
                "id": ids[:: max(1, rows // 100_000)],
                "label": np.random.default_rng(0).integers(
                    0, 2, len(ids[:: max(1, rows // 100_000)])
                ),
                "time": pd.Timestamp("2026-11-21", tz="UTC"),
            }
        )
        end = datetime(2026, 11, 21, tzinfo=UTC)
        started = time.perf_counter()
        window = read_inference_log(str(folder / "log"), end - timedelta(days=1), end)
        read_s = time.perf_counter() - started
        labelled = join_labels(window, labels, "prediction_id")
        report = analyse_window(
            window,
            reference,
            labelled,
            params.data,
            params.drift,
            params.monitor,
            "roc_auc",
            "churn-classifier",
        )
        total = time.perf_counter() - started
    if report.rows != rows:
        raise RuntimeError(f"the monitor saw {report.rows} of {rows} logged predictions")
    return {
        "monitor_rows": rows,
        "monitor_seconds": round(total, 3),
        "monitor_read_seconds": round(read_s, 3),
        "monitor_labelled_rows": report.live.rows if report.live else 0,
        "monitor_retrain": report.retrain,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--monitor-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "serving.json")
    args = parser.parse_args(argv)
    print(f"serving: {args.rounds} rounds of {args.requests} requests, log on and off ...")
    results = measure_serving(args.requests, args.rounds, args.clients)
    print(f"monitor over {args.monitor_rows:,} logged predictions ...")
    results |= measure_monitor(args.monitor_rows)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    ok = results["serving_log_slowdown"] <= TARGET_SLOWDOWN
    for key, value in results.items():
        if key != "serving_all":
            print(f"  {key}: {value}")
    print(f"{'target met' if ok else 'TARGET MISSED'} (log on at most 5% slower); wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

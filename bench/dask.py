"""Benchmark of ``train.engine: dask``: where Dask starts to pay.

    python -m bench.dask [--rows 2000000] [--parts 8]

Writes ``--rows`` rows of the synthetic churn batch as ``--parts`` Parquet parts, then measures
rows per second of training (the training split) and of scoring (every row, one float per row)
with the local engine (pandas, ``train.n_jobs`` threads) and with LightGBM's Dask estimator on
a ``distributed.LocalCluster`` of 1 and of 2 worker processes (``threads_per_worker`` 1), and
the peak resident memory of each worker process (psutil RSS, sampled every 0.2 s while it
works). Same params.yaml hyperparameters for all. ``bench_dask`` is the function bench/run.py
calls; it returns the figures as a dict for bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class PeakRss:
    """Samples the RSS of some processes in a thread; ``peaks`` is the max per pid, in bytes."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        import psutil

        self.processes = [psutil.Process(pid) for pid in pids]
        self.peaks = dict.fromkeys(pids, 0)
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for process in self.processes:
                rss = process.memory_info().rss
                self.peaks[process.pid] = max(self.peaks[process.pid], rss)
            if self.stop.wait(self.every):
                return

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def write_parts(folder: Path, rows: int, parts: int) -> list[Path]:
    from tasks.data import make_batch

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(parts):
        path = folder / f"part-{i:05d}.parquet"
        make_batch(i + 1, rows // parts).to_parquet(path, index=False)
        paths.append(path)
    return paths


def bench_local(parts: list[Path], params: Any) -> dict[str, Any]:
    import pandas as pd

    from tasks.data import split_holdout
    from tasks.estimators import train_model

    whole = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    train, _ = split_holdout(whole, params.data)
    pipeline, fit_s = _timed(lambda: train_model(train, params))
    _, score_s = _timed(lambda: pipeline.predict_proba(whole[params.data.features])[:, 1])
    return {
        "train_rows_per_s": round(len(train) / fit_s),
        "score_rows_per_s": round(len(whole) / score_s),
        "train_seconds": round(fit_s, 2),
        "score_seconds": round(score_s, 2),
    }


def bench_workers(parts: list[Path], params: Any, workers: int) -> dict[str, Any]:
    import dask.dataframe as dd

    from tasks.dask_engine import dask_client, train_parts

    settings = params.dask.model_copy(
        update={"workers": workers, "scheduler": None, "threads_per_worker": 1}
    )
    params = params.model_copy(update={"dask": settings})
    with dask_client(params) as client:
        pids = client.run(os.getpid)
        with PeakRss(list(pids.values())) as rss:
            trained, fit_s = _timed(lambda: train_parts(client, parts, params))
            pipeline, features = trained.pipeline, list(params.data.features)
            ddf = dd.read_parquet([str(p) for p in parts])
            scores = ddf[features].map_partitions(
                lambda df: pipeline.predict_proba(df)[:, 1], meta=("score", "f8")
            )
            total, score_s = _timed(lambda: len(client.compute(scores).result()))
    return {
        "train_rows_per_s": round(trained.train_rows / fit_s),
        "score_rows_per_s": round(total / score_s),
        "train_seconds": round(fit_s, 2),
        "score_seconds": round(score_s, 2),
        "peak_rss_mb_per_worker": sorted(round(b / 2**20) for b in rss.peaks.values()),
    }


def bench_dask(rows: int = 2_000_000, parts: int = 8) -> dict[str, Any]:
    """Rows per second of training and scoring: local engine, 1 and 2 local Dask workers."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )  # the workers import tasks/
    from tasks.config import load_params

    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="ctflows-bench-dask-") as tmp:
        paths = write_parts(Path(tmp) / "parts", rows, parts)
        figures: dict[str, Any] = {"rows": rows, "parts": parts}
        figures["local"] = bench_local(paths, params)
        for workers in (1, 2):
            figures[f"dask_{workers}_workers"] = bench_workers(paths, params, workers)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--parts", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(bench_dask(args.rows, args.parts), indent=2))


if __name__ == "__main__":
    main()

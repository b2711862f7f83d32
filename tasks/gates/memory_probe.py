"""Peak memory of one prediction call, measured in a fresh process.

    python -m tasks.gates.memory_probe MODEL.pkl BATCH.pkl TASK   -> JSON on stdout
    python -m tasks.gates.memory_probe --serve [MODULE ...]       (started ahead, see below)

With ``--serve`` the process imports the model's libraries, prints ``ready``, then reads one
line ``MODEL.pkl BATCH.pkl TASK`` from stdin and measures it: a flow starts it while it
trains, so the imports are paid alongside training rather than while the gates wait.

Native allocations (LightGBM, XGBoost, OpenMP buffers) never reach Python's tracemalloc, so
the probe samples the process's resident set (psutil, every 0.5 ms) during the call, after
one warm-up call, and reports the growth over the resident set before it, together with
the peak of Python-level allocations (tracemalloc)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from typing import Any


def probe(model: Any, batch: Any, task: str) -> dict[str, float]:
    import psutil

    from tasks.gates.evidence import predict

    predict(model, batch, task)  # type: ignore[arg-type]  # warm-up: lazy init is not per call
    gc.collect()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    try:
        predict(model, batch, task)  # type: ignore[arg-type]
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {"rss_growth": float(peak[0] - base), "python_peak": float(traced)}


def main(argv: list[str] | None = None) -> None:
    import importlib

    import cloudpickle
    import pandas as pd

    args = argv or sys.argv[1:]
    if args and args[0] == "--serve":
        os.nice(19)  # imports on the CPU the run leaves idle, not on its training's
        for module in ["tasks.gates.evidence", "psutil", *args[1:]]:
            with contextlib.suppress(ImportError):  # loading the model names what is missing
                importlib.import_module(module)
        print("ready", flush=True)
        args = sys.stdin.readline().split()
    model_path, batch_path, task = args[:3]
    with open(model_path, "rb") as f:
        model = cloudpickle.load(f)
    batch = pd.read_pickle(batch_path)
    print(json.dumps(probe(model, batch, task)))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # the answer is out: skip the interpreter's teardown of pandas, scikit-learn and LightGBM
    # (0.3 s here), which the gate would otherwise wait for
    os._exit(0)

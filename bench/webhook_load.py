"""Webhook receiver under load: many signed requests, tens in flight, a few data versions.

    python -m bench.webhook_load [--requests 400] [--in-flight 32] [--versions 20]

Starts a Prefect server and `python -m deployments.webhook` on loopback, registers the
data-landed deployment (not served: its runs stay scheduled, so only the receiver is
measured), fires ``requests`` distinct signed requests for ``versions`` data versions from
``in_flight`` threads, each on its own connection, and reports the latency percentiles of the
answers. Target: p95 under 1 s. `bench_webhook_load()` is what `make bench` calls; it writes
bench/webhook_load.json. The integration tests use `fire()` to check behaviour, not timing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_P95_SECONDS = 1.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    seconds: float


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30) -> Answer:
    """One POST on a fresh connection; the status, the JSON answer and the seconds it took."""
    parts = urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        answer = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        answer = {"error": raw.decode(errors="replace")}
    return Answer(resp.status, answer, time.perf_counter() - started)


def signed_headers(secret: str, body: bytes) -> dict[str, str]:
    from deployments.webhook import sign

    stamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Ctflows-Timestamp": stamp,
        "X-Ctflows-Signature": sign(secret, stamp, body),
    }


def landed_bodies(
    requests: int, versions: int, first: int = 1, path: str = "data/batch.parquet"
) -> list[bytes]:
    """``requests`` distinct bodies (a delivery number each) naming ``versions`` md5s in turn,
    numbered from ``first``."""
    md5s = [f"{v:032x}" for v in range(first, first + versions)]
    return [
        json.dumps(
            {"path": path, "rev": f"rev{i % versions}", "md5": md5s[i % versions], "delivery": i}
        ).encode()
        for i in range(requests)
    ]


def fire(url: str, secret: str, bodies: list[bytes], in_flight: int) -> list[Answer]:
    """Post every body, signed, ``in_flight`` at a time; the answers in the bodies' order."""

    def one(body: bytes) -> Answer:
        return post(url, body, signed_headers(secret, body))

    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        return list(pool.map(one, bodies))


def write_params(state: Path, **webhook: Any) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["state_dir"] = str(state / "state")
    raw["deploy"]["target"] = "dry-run"
    raw["validate"]["suite"] = str(ROOT / raw["validate"]["suite"])
    raw["triggers"]["webhook"].update(webhook)
    state.mkdir(parents=True, exist_ok=True)
    params_file = state / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params_file


def register_data_landed(params_file: Path) -> str:
    """Register (not serve) the data-landed deployment; its full name."""
    from deployments.definitions import data_landed_deployment, deployment_specs
    from deployments.serve import build_deployment
    from tasks.config import load_params

    params = load_params(params_file)
    name = data_landed_deployment(params)
    spec = next(s for s in deployment_specs(params, str(params_file)) if s.full_name == name)
    build_deployment(spec).apply()
    return spec.full_name


@contextmanager
def receiver_process(
    params_file: Path, secret: str, api_url: str, log: Path, host: str = "127.0.0.1"
) -> Iterator[str]:
    """`python -m deployments.webhook` on a free port; yields its data-landed URL."""
    from deployments.server import free_port

    port = free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PYTHONPATH": str(ROOT),
        "CTFLOWS_WEBHOOK_SECRET": secret,
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deployments.webhook",
                "--params",
                str(params_file),
                "--host",
                host,
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not _healthy(host, port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the receiver did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield f"http://{host}:{port}/hooks/data-landed"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _healthy(host: str, port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def summarize(answers: list[Answer], in_flight: int) -> dict[str, Any]:
    seconds = sorted(a.seconds for a in answers)
    runs = {a.body.get("flow_run_id") for a in answers if a.status == 202}
    return {
        "requests": len(answers),
        "in_flight": in_flight,
        "statuses": {
            str(s): sum(a.status == s for a in answers) for s in {a.status for a in answers}
        },
        "flow_runs": len(runs),
        "p50_seconds": round(statistics.median(seconds), 3),
        "p95_seconds": round(seconds[max(0, int(0.95 * len(seconds)) - 1)], 3),
        "max_seconds": round(seconds[-1], 3),
        "target_p95_seconds": TARGET_P95_SECONDS,
    }


def bench_webhook_load(
    state: Path, requests: int = 400, in_flight: int = 32, versions: int = 20
) -> dict[str, Any]:
    """Latency of the receiver under load, on its own Prefect server in ``state``."""
    import shutil

    from deployments.server import prefect_server

    if state.exists():
        shutil.rmtree(state)
    secret = "bench-secret"
    params_file = write_params(state)
    with prefect_server(state / "prefect") as api_url:
        register_data_landed(params_file)
        with receiver_process(params_file, secret, api_url, state / "receiver.log") as url:
            warm_up = landed_bodies(in_flight, in_flight, first=10_000)
            fire(url, secret, warm_up, in_flight)
            answers = fire(url, secret, landed_bodies(requests, versions), in_flight)
    return summarize(answers, in_flight)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "webhook_load.json")
    args = parser.parse_args(argv)
    result = bench_webhook_load(
        ROOT / ".ctflows" / "bench-webhook", args.requests, args.in_flight, args.versions
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["p95_seconds"] < TARGET_P95_SECONDS and set(result["statuses"]) == {"202"}
    print(f"{'target met' if ok else 'TARGET MISSED'}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

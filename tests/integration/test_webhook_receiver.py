"""The webhook receiver on its own (`python -m deployments.webhook`) against the real Prefect
server: at-least-once when Prefect fails, malformed headers, many and slow clients.

The data-landed deployment is registered but not served, so the runs the receiver creates stay
scheduled; each test deletes them so that no later served test runs them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.webhook_load import (
    fire,
    landed_bodies,
    post,
    receiver_process,
    register_data_landed,
    signed_headers,
    write_params,
)

SECRET = "receiver-test-secret"
DATA_LANDED = "continuous-training/churn-classifier-on-new-data"


class SwitchableProxy:
    """A TCP proxy on loopback in front of the Prefect API: while down, every connection is
    dropped at once, as by a server that is not there; while up, bytes pass both ways."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{parts.path}"
        self.up = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def runs_of(deployment: str, since: float) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
        )
    return [r for r in runs if r.created and r.created.timestamp() >= since]


def delete_runs(runs: list) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in runs:
            client.delete_flow_run(run.id)


@pytest.fixture
def receiver_alone(prefect_api: str, tmp_path: Path) -> Iterator:
    """Start the receiver with webhook params overridden; yields a starter function."""
    since = time.time() - 1
    deployments: set[str] = set()

    def start(api_url: str = prefect_api, **webhook):
        params_file = write_params(tmp_path / f"state{len(deployments)}", **webhook)
        deployments.add(register_data_landed(params_file))
        return receiver_process(params_file, SECRET, api_url, tmp_path / "receiver.log")

    yield start
    for deployment in deployments:
        delete_runs(runs_of(deployment, since))


BODY = json.dumps({"path": "data/batch.parquet", "rev": "r1", "md5": "1" * 32}).encode()


def test_a_request_refused_because_prefect_was_down_starts_its_run_when_retried(
    receiver_alone, prefect_api
):
    proxy = SwitchableProxy(prefect_api)
    since = time.time() - 1
    try:
        with receiver_alone(proxy.url, request_timeout_seconds=4) as url:
            headers = signed_headers(SECRET, BODY)
            down = post(url, BODY, headers)
            assert down.status == 503, down
            assert "retry" in down.body["error"]
            assert runs_of(DATA_LANDED, since) == []

            proxy.up = True
            retried = post(url, BODY, headers)  # the very same signed request
            assert retried.status == 202, retried
            runs = runs_of(DATA_LANDED, since)
            assert [str(r.id) for r in runs] == [retried.body["flow_run_id"]]

            replay = post(url, BODY, headers)  # now it was accepted: a replay
            assert replay.status == 409
            assert retried.body["flow_run_id"] in replay.body["error"]
            again = BODY[:-1] + b', "delivery": 2}'  # a second delivery of the same data
            fresh = post(url, again, signed_headers(SECRET, again))
            assert fresh.status == 202 and fresh.body["flow_run_id"] == retried.body["flow_run_id"]
            assert fresh.body["duplicate"] is True
    finally:
        proxy.close()


def raw_post(url: str, headers: list[tuple[str, bytes]], body: bytes) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("POST", parts.path)
        for name, value in [*headers, ("Content-Length", str(len(body)).encode())]:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=é".encode(),
        ("sha256=" + "ü" * 64).encode(),
        b"sha256=" + bytes(range(128, 192)),
        b"sha256=" + b"0" * 63,
        b"md5=abc",
    ],
)
def test_a_malformed_signature_header_gets_401_and_the_receiver_goes_on(receiver_alone, signature):
    with receiver_alone() as url:
        stamp = str(int(time.time())).encode()
        status, answer = raw_post(
            url, [("X-Ctflows-Timestamp", stamp), ("X-Ctflows-Signature", signature)], BODY
        )
        assert status == 401 and "malformed" in answer["error"], answer
        status, answer = raw_post(
            url,
            [("X-Ctflows-Timestamp", "١٧٠٠".encode()), ("X-Ctflows-Signature", signature)],
            BODY,
        )
        assert status == 401, answer
        assert post(url, BODY, signed_headers(SECRET, BODY)).status == 202


def test_hundreds_of_requests_tens_in_flight_one_run_per_data_version(receiver_alone):
    since = time.time() - 1
    with receiver_alone() as url:
        bodies = landed_bodies(300, 12)
        answers = fire(url, SECRET, bodies, 24)
    assert Counter(a.status for a in answers) == {202: 300}
    by_md5: dict[str, set[str]] = {}
    for body, answer in zip(bodies, answers, strict=True):
        by_md5.setdefault(json.loads(body)["md5"], set()).add(answer.body["flow_run_id"])
    assert len(by_md5) == 12 and all(len(ids) == 1 for ids in by_md5.values())
    runs = runs_of(DATA_LANDED, since)
    assert len(runs) == 12  # none lost, none twice
    assert {str(r.id) for r in runs} == set().union(*by_md5.values())


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _dribble_until_closed(sock: socket.socket, data: bytes, limit: float) -> float:
    """Send ``data`` a byte every 0.5 s (each read is quick, the whole request is not) until the
    server closes the connection; the seconds that took."""
    started = time.monotonic()
    sock.settimeout(0.5)
    for byte in data * 100:
        if time.monotonic() - started > limit:
            raise AssertionError(f"connection still open after {limit} s")
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(4096) == b"":
                break
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed by the server
            break
    return time.monotonic() - started


def test_slow_clients_are_cut_off_by_a_whole_request_deadline(receiver_alone):
    with receiver_alone(request_timeout_seconds=3) as url:
        slow_headers = _connect(url)
        slow_headers.sendall(b"POST /hooks/data-landed HTTP/1.1\r\nHost: x\r\n")
        assert _dribble_until_closed(slow_headers, b"X-Slow: y\r\n", 10) < 6

        slow_body = _connect(url)
        head = signed_headers(SECRET, BODY)
        slow_body.sendall(
            b"POST /hooks/data-landed HTTP/1.1\r\nHost: x\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items())
            + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        )
        assert _dribble_until_closed(slow_body, BODY, 10) < 6
        # and the receiver still answers others
        assert post(url, BODY, signed_headers(SECRET, BODY)).status == 202


def test_requests_beyond_the_bound_in_flight_get_503_at_once(receiver_alone):
    with receiver_alone(max_in_flight=4, request_timeout_seconds=5) as url:
        idle = [_connect(url) for _ in range(4)]
        try:
            time.sleep(0.3)
            answer = post(url, BODY, signed_headers(SECRET, BODY), timeout=10)
            assert answer.status == 503 and answer.seconds < 3
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.5)
        assert post(url, BODY, signed_headers(SECRET, BODY)).status == 202


def test_an_oversized_body_is_refused_without_reading_past_the_limit(receiver_alone):
    with receiver_alone(max_body_bytes=1000) as url:
        big = b"x" * 1001
        assert post(url, big, signed_headers(SECRET, big)).status == 413
        sock = _connect(url)  # a huge declared body: refused from its header, closed at once
        sock.sendall(
            b"POST /hooks/data-landed HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
            + b"x" * 1000
        )
        sock.settimeout(10)
        assert b" 413 " in sock.recv(4096).split(b"\r\n")[0]
        sock.close()


def test_requests_go_to_the_model_whose_data_they_name(prefect_api, tmp_path):
    from deployments.definitions import project_specs
    from deployments.serve import build_deployment
    from tests.integration.test_models import declare

    params_file = write_params(tmp_path / "project")
    for name in ("churn-a", "churn-b"):
        declare(params_file.parent, name, f"data/{name}.parquet")
    specs = [s for s in project_specs(params_file) if s.name.endswith("-on-new-data")]
    for spec in specs:
        build_deployment(spec).apply()
    since = time.time() - 1
    try:
        with receiver_process(params_file, SECRET, prefect_api, tmp_path / "r.log") as url:
            answers = {}
            for name in ("churn-a", "churn-b"):
                body = json.dumps(
                    {"path": f"data/{name}.parquet", "rev": "r1", "md5": "2" * 32}
                ).encode()
                answers[name] = post(url, body, signed_headers(SECRET, body))
            named = json.dumps(
                {"path": "data/x.parquet", "rev": "r1", "md5": "3" * 32, "model": "churn-b"}
            ).encode()
            explicit = post(url, named, signed_headers(SECRET, named))
            unknown = json.dumps({"path": "data/x.parquet", "rev": "r1"}).encode()
            refused = post(url, unknown, signed_headers(SECRET, unknown))
    finally:
        runs = [r for spec in specs for r in runs_of(spec.full_name, since)]
        delete_runs(runs)
    # the same md5 under two models: two runs, one per model's deployment
    assert answers["churn-a"].status == answers["churn-b"].status == 202
    assert answers["churn-a"].body["deployment"].endswith("/churn-a-on-new-data")
    assert answers["churn-b"].body["deployment"].endswith("/churn-b-on-new-data")
    assert answers["churn-a"].body["flow_run_id"] != answers["churn-b"].body["flow_run_id"]
    assert explicit.status == 202 and explicit.body["deployment"].endswith("/churn-b-on-new-data")
    assert refused.status == 422 and "churn-a (data/churn-a.parquet)" in refused.body["error"]
    assert len(runs) == 3


def test_a_token_in_the_data_repo_is_neither_answered_nor_logged(prefect_api, tmp_path):
    """A request without md5 is resolved against data.repo; when that fails, the 422 says why
    without the repository's credentials, and so does the receiver's log."""
    import yaml

    with socket.socket() as closed:  # a git server that is not there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    params_file = write_params(tmp_path / "project")
    raw = yaml.safe_load(params_file.read_text())
    raw["data"]["repo"] = f"http://ci-bot:ghp_t0kenZZ@127.0.0.1:{port}/team/data.git"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    log = tmp_path / "receiver.log"
    body = json.dumps({"path": "data/batch.parquet", "rev": "main"}).encode()
    with receiver_process(params_file, SECRET, prefect_api, log) as url:
        answer = post(url, body, signed_headers(SECRET, body))
    assert answer.status == 422, answer
    assert "cannot resolve" in answer.body["error"] and "127.0.0.1" in answer.body["error"]
    assert "t0kenZZ" not in answer.body["error"] and "ci-bot" not in answer.body["error"]
    logged = log.read_text()
    assert "cannot resolve" in logged and "t0kenZZ" not in logged


def test_fields_the_receiver_cannot_use_are_the_senders_error_not_a_retry(receiver_alone):
    bad = [
        json.dumps({"path": "data/x.parquet", "rev": "r" * 200_000}).encode(),
        json.dumps({"path": "data/\u0000.parquet", "rev": "main"}).encode(),
        b'{"path": "data/\\ud800.parquet", "rev": "main"}',
        b'{"path": "p", "rev": "r", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ]
    with receiver_alone() as url:
        answers = [post(url, body, signed_headers(SECRET, body)) for body in bad]
        assert post(url, BODY, signed_headers(SECRET, BODY)).status == 202
    assert [a.status for a in answers] == [422, 422, 422, 400], answers
    assert all("retry" not in a.body["error"] for a in answers)


def test_the_same_md5_at_two_paths_is_two_data_versions_in_either_order(receiver_alone):
    """Never answered with the run started for the other path; a second revision of the same
    bytes at the same path shares its run."""
    since = time.time() - 1

    def body(path: str, rev: str, md5: str) -> bytes:
        return json.dumps({"path": path, "rev": rev, "md5": md5}).encode()

    with receiver_alone() as url:
        answers = {}
        for md5, paths in (
            ("4" * 32, ("data/a.parquet", "data/b.parquet")),
            ("5" * 32, ("data/b.parquet", "data/a.parquet")),
        ):
            for i, path in enumerate(paths):
                sent = body(path, f"r{i}", md5)
                answers[md5, path] = post(url, sent, signed_headers(SECRET, sent))
        again = body("data/a.parquet", "r7", "4" * 32)
        shared = post(url, again, signed_headers(SECRET, again))
    assert all(a.status == 202 for a in answers.values()), answers
    for (_md5, path), answer in answers.items():
        assert answer.body["parameters"]["path"] == path and answer.body["duplicate"] is False
    ids = {a.body["flow_run_id"] for a in answers.values()}
    assert len(ids) == 4
    assert shared.status == 202 and shared.body["duplicate"] is True
    assert shared.body["flow_run_id"] == answers["4" * 32, "data/a.parquet"].body["flow_run_id"]
    assert {str(r.id) for r in runs_of(DATA_LANDED, since)} == ids

import asyncio
import datetime
import hashlib
import hmac
import json
from types import SimpleNamespace

import httpx
import pytest

from deployments.webhook import (
    Landed,
    ReplayJournal,
    Route,
    Signed,
    WebhookError,
    moves_on,
    parse_body,
    route,
    sign,
    verify,
)

SECRET = "s3cret"


def headers(body: bytes, ts: int, secret: str = SECRET) -> dict[str, str]:
    return {"x-ctflows-timestamp": str(ts), "x-ctflows-signature": sign(secret, str(ts), body)}


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"path": "p", "rev": "r"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == f"sha256={expected}"


def test_a_valid_request_yields_its_signature_and_time():
    body = b"{}"
    signed = verify(SECRET, headers(body, 1000), body, 1001, 300)
    assert signed == Signed(sign(SECRET, "1000", body), 1000)


GOOD = sign(SECRET, "1000", b"{}")


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda h, b: ({}, b), "missing"),
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: ({**h, "x-ctflows-timestamp": "soon"}, b), "unix seconds"),
        (lambda h, b: (headers(b, 1000 - 301), b), "more than 300"),
        (lambda h, b: (headers(b, 1000, "other"), b), "does not match"),
        # malformed headers are refusals, never exceptions (a non-ASCII str crashed
        # hmac.compare_digest with TypeError)
        (lambda h, b: ({**h, "x-ctflows-signature": "sha256=é" + "0" * 63}, b), "malformed"),
        (lambda h, b: ({**h, "x-ctflows-signature": "sha256=ü"}, b), "malformed"),
        (lambda h, b: ({**h, "x-ctflows-signature": "Ã©Ã©"}, b), "malformed"),
        (lambda h, b: ({**h, "x-ctflows-signature": GOOD.upper()}, b), "malformed"),
        (lambda h, b: ({**h, "x-ctflows-signature": GOOD[7:]}, b), "malformed"),
        (lambda h, b: ({**h, "x-ctflows-signature": GOOD + "0"}, b), "malformed"),
        (lambda h, b: ({**h, "x-ctflows-timestamp": "١٠٠٠"}, b), "ASCII digits"),
        (lambda h, b: ({**h, "x-ctflows-timestamp": "-1000"}, b), "unix seconds"),
        (lambda h, b: ({**h, "x-ctflows-timestamp": "9" * 400}, b), "unix seconds"),
    ],
)
def test_bad_and_malformed_signatures_are_refused_with_401(mutate, words):
    body = b"{}"
    h, b = mutate(headers(body, 1000), body)
    with pytest.raises(WebhookError, match=words) as err:
        verify(SECRET, h, b, 1000, 300)
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{nope", 400),
        (b"[1]", 400),
        (b"\xff\xfe", 400),
        (b'{"path": "p"}', 422),
        (b'{"path": "p", "rev": 3}', 422),
        (b'{"path": "p", "rev": "r", "md5": "short"}', 422),
        (b'{"path": "p", "rev": "r", "model": 7}', 422),
        (('{"path": "p", "rev": "r", "md5": "' + "é" * 32 + '"}').encode(), 422),
        # fields the receiver cannot pass on are the sender's error, never "retry" (503)
        (json.dumps({"path": "p" * 200_000, "rev": "r"}).encode(), 422),
        (json.dumps({"path": "p", "rev": "r" * 200_000}).encode(), 422),
        (json.dumps({"path": "data/\u0000x.parquet", "rev": "r"}).encode(), 422),
        (json.dumps({"path": "p", "rev": "r\u0000"}).encode(), 422),
        (b'{"path": "data/\\ud800.parquet", "rev": "r"}', 422),
        (b'{"path": "p", "rev": "\\udfff"}', 422),
        (b'{"path": "p", "rev": "--upload-pack=touch /tmp/x"}', 422),
        (json.dumps({"path": "p", "rev": "r", "model": "m" * 100_000}).encode(), 422),
        (b'{"path": "p", "rev": "r", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
    ],
)
def test_malformed_bodies_are_refused(body, status):
    with pytest.raises(WebhookError) as err:
        parse_body(body)
    assert err.value.status == status


def test_a_data_version_is_its_path_and_md5_whatever_the_revision():
    md5 = "a" * 32
    assert Landed("p", "r1", md5).identity == Landed("p", "r2", md5).identity
    assert Landed("p", "r1", md5).identity != Landed("q", "r1", md5).identity
    assert Landed("p", "r1", md5).tag == Landed("q", "r2", md5).tag  # the same bytes
    assert Landed("p", "r1", None).identity != Landed("p", "r2", None).identity


@pytest.mark.parametrize(
    ("state", "moves"),
    [
        ("SCHEDULED", False),
        ("PENDING", False),
        ("RUNNING", False),
        ("COMPLETED", False),
        ("FAILED", True),
        ("CRASHED", True),
        ("CANCELLED", True),
    ],
)
def test_only_a_run_that_did_not_finish_moves_its_data_on_to_a_new_attempt(state, moves):
    assert moves_on(state) is moves


def test_the_key_names_the_model_the_data_and_the_attempt():
    landed = Landed("p", "r", "m" * 32, "churn")
    assert landed.idempotency_key(0) == f"data-landed:churn:p@{'m' * 32}#0"
    assert landed.idempotency_key(0) != landed.idempotency_key(1)
    other_model = Landed("p", "r", "m" * 32, "fraud")
    assert other_model.idempotency_key(0) != landed.idempotency_key(0)


ROUTES = [
    Route("churn", "data/churn.parquet", "continuous-training/churn-on-new-data", "a", "repo"),
    Route("fraud", "data/fraud.parquet", "continuous-training/fraud-on-new-data", "b", "repo"),
    Route("fraud-v2", "data/fraud.parquet", "continuous-training/fraud-v2-on-new-data", "c", "r"),
]


@pytest.mark.parametrize(
    ("landed", "model"),
    [
        (Landed("data/churn.parquet", "r", None), "churn"),
        (Landed("data/fraud.parquet", "r", None, "fraud-v2"), "fraud-v2"),
        (Landed("data/other.parquet", "r", None, "churn"), "churn"),
    ],
)
def test_a_request_goes_to_the_model_it_names_or_whose_data_it_names(landed, model):
    assert route(landed, ROUTES).model == model


@pytest.mark.parametrize(
    ("landed", "words"),
    [
        (Landed("data/churn.parquet", "r", None, "nope"), "unknown model 'nope'; known models"),
        (Landed("data/other.parquet", "r", None), "no model trains on 'data/other.parquet'"),
        (Landed("data/fraud.parquet", "r", None), "fraud, fraud-v2 all train on"),
    ],
)
def test_a_request_no_single_model_takes_is_refused_naming_the_models(landed, words):
    with pytest.raises(WebhookError, match=words) as err:
        route(landed, ROUTES)
    assert err.value.status == 422


def test_one_model_takes_every_path():
    assert route(Landed("elsewhere.parquet", "r", None), ROUTES[:1]).model == "churn"


class FakePrefect:
    """Prefect's idempotent create in memory: a key it has seen hands back the same run."""

    def __init__(self) -> None:
        self.runs: dict[str, SimpleNamespace] = {}

    async def read_deployment_by_name(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(id="deployment-id")

    async def create_flow_run_from_deployment(self, deployment_id, **kwargs) -> SimpleNamespace:
        key = kwargs["idempotency_key"]
        if key not in self.runs:
            self.runs[key] = SimpleNamespace(
                id=f"run-{len(self.runs)}",
                name=key,
                parameters=kwargs["parameters"],
                created=datetime.datetime.now(datetime.UTC),
                state=SimpleNamespace(
                    type=SimpleNamespace(value="SCHEDULED"), is_final=lambda: False
                ),
            )
        return self.runs[key]

    def end(self, run_id: str, state: str) -> None:
        run = next(r for r in self.runs.values() if r.id == run_id)
        run.state = SimpleNamespace(type=SimpleNamespace(value=state), is_final=lambda: True)


def test_duplicates_share_a_run_and_a_failed_run_is_started_again():
    from deployments.run_starter import RunStarter

    prefect = FakePrefect()
    starter = RunStarter(prefect, "continuous-training/on-new-data", "params.yaml")
    landed = Landed("p", "r", "m" * 32)

    async def burst(n: int) -> list:
        async def one():
            async with starter.one_at_a_time(landed.identity):
                return await starter.start(landed)

        return await asyncio.gather(*(one() for _ in range(n)))

    first = asyncio.run(burst(10))
    assert {s.flow_run_id for s in first} == {"run-0"}
    assert [s.duplicate for s in first].count(False) == 1
    prefect.end("run-0", "FAILED")
    starter.live.clear()  # past FRESH_SECONDS
    again = asyncio.run(burst(5))
    assert {s.flow_run_id for s in again} == {"run-1"}
    prefect.end("run-1", "COMPLETED")
    starter.live.clear()
    done = asyncio.run(burst(3))
    assert {s.flow_run_id for s in done} == {"run-1"}  # a completed run is not started again
    assert len(prefect.runs) == 2


def test_replay_journal_remembers_the_run_until_the_timestamp_is_stale():
    journal = ReplayJournal(10)
    journal.record(Signed("sig", 100), "run-1", 100)
    assert journal.accepted("sig", 105) == "run-1"
    assert journal.accepted("other", 105) is None
    assert journal.accepted("sig", 111) is None  # a request signed at 100 is refused anyway
    assert len(journal) == 0


def test_replay_journal_survives_a_restart_and_drops_stale_lines(tmp_path):
    path = tmp_path / "accepted.log"
    journal = ReplayJournal(300, path, now=1000)
    journal.record(Signed("old", 500), "run-0", 600)
    journal.record(Signed("new", 990), "run-1", 1000)
    restarted = ReplayJournal(300, path, now=1000)
    assert restarted.accepted("new", 1001) == "run-1"
    assert restarted.accepted("old", 1001) is None
    assert path.read_text().split() == ["new", "990", "run-1"]


def test_replay_journal_file_stays_bounded_under_steady_traffic(tmp_path):
    path = tmp_path / "accepted.log"
    journal = ReplayJournal(10, path, now=0)
    for second in range(5_000):  # one request a second, each remembered for 10 s
        journal.record(Signed(f"sig{second}", second), f"run{second}", second)
    assert len(journal) <= 11
    assert len(path.read_text().splitlines()) <= 2 * 11 + 101


def _prefect_answering(statuses: list[int]) -> tuple[httpx.MockTransport, list[bytes]]:
    """An httpx transport that answers with ``statuses`` in turn; the bodies it was sent."""

    seen: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        return httpx.Response(statuses[min(len(seen), len(statuses)) - 1], json={"n": len(seen)})

    return httpx.MockTransport(answer), seen


def test_a_busy_prefect_answer_is_sent_again_at_once_with_the_same_body():
    from deployments.run_starter import BusyRetryTransport

    inner, seen = _prefect_answering([503, 503, 201])

    async def create() -> httpx.Response:
        transport = BusyRetryTransport(inner, pauses=(0.0, 0.0, 0.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://prefect") as client:
            return await client.post("/deployments/d/create_flow_run", json={"key": "k#0"})

    response = asyncio.run(create())
    assert response.status_code == 201 and response.json() == {"n": 3}
    assert seen == [b'{"key":"k#0"}'] * 3


def test_a_prefect_that_stays_busy_gets_its_503_back_after_the_short_retries():
    from deployments.run_starter import BusyRetryTransport

    inner, seen = _prefect_answering([503])

    async def create() -> httpx.Response:
        transport = BusyRetryTransport(inner, pauses=(0.0, 0.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://prefect") as client:
            return await client.post("/deployments/d/create_flow_run", json={})

    assert asyncio.run(create()).status_code == 503
    assert len(seen) == 3  # two short retries, then the answer goes to Prefect's own retries


@pytest.mark.parametrize("first", ["data/a.parquet", "data/b.parquet"])
def test_the_same_md5_at_another_path_gets_a_run_of_its_own_in_either_order(first):
    from deployments.run_starter import RunStarter

    prefect = FakePrefect()
    starter = RunStarter(prefect, "continuous-training/on-new-data", "params.yaml")
    second = "data/b.parquet" if first == "data/a.parquet" else "data/a.parquet"
    md5 = "c" * 32

    async def land(path: str, rev: str):
        landed = Landed(path, rev, md5)
        async with starter.one_at_a_time(landed.identity):
            return await starter.start(landed)

    one = asyncio.run(land(first, "r1"))
    other = asyncio.run(land(second, "r2"))
    assert other.flow_run_id != one.flow_run_id and not other.duplicate
    assert (one.parameters["path"], other.parameters["path"]) == (first, second)
    moved = asyncio.run(land(first, "r9"))  # the same bytes at the same path, another commit
    assert moved.flow_run_id == one.flow_run_id and moved.duplicate
    assert moved.parameters["rev"] == "r1"  # the answer says which run it shares

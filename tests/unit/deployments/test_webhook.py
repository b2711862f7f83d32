import hashlib
import hmac

import pytest

from deployments.webhook import (
    Landed,
    ReplayJournal,
    Signed,
    WebhookError,
    attempt_key,
    parse_body,
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
        (('{"path": "p", "rev": "r", "md5": "' + "é" * 32 + '"}').encode(), 422),
    ],
)
def test_malformed_bodies_are_refused(body, status):
    with pytest.raises(WebhookError) as err:
        parse_body(body)
    assert err.value.status == status


def test_the_data_identity_is_the_md5_when_given():
    md5 = "a" * 32
    assert Landed("p", "r1", md5).tag == Landed("q", "r2", md5).tag
    assert Landed("p", "r1", None).identity != Landed("p", "r2", None).identity


@pytest.mark.parametrize(
    ("states", "attempt"),
    [
        ([], 0),
        (["PENDING"], 0),
        (["RUNNING"], 0),
        (["COMPLETED"], 0),
        (["FAILED"], 1),
        (["CRASHED"], 1),
        (["CANCELLED"], 1),
        (["FAILED", "RUNNING"], 1),
        (["FAILED", "CRASHED"], 2),
        (["CRASHED", "FAILED", "COMPLETED"], 2),
    ],
)
def test_a_failed_or_crashed_run_moves_the_key_on_anything_else_keeps_it(states, attempt):
    assert attempt_key("m" * 32, states) == f"data-landed:{'m' * 32}#{attempt}"


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

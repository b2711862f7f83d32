import hashlib
import hmac

import pytest

from deployments.webhook import Landed, ReplayGuard, WebhookError, parse_body, sign, verify

SECRET = "s3cret"


def headers(body: bytes, ts: int, secret: str = SECRET) -> dict[str, str]:
    return {"x-ctflows-timestamp": str(ts), "x-ctflows-signature": sign(secret, str(ts), body)}


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"path": "p", "rev": "r"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == f"sha256={expected}"


def test_valid_request_passes_once_then_is_a_replay():
    guard, body = ReplayGuard(300), b"{}"
    verify(SECRET, headers(body, 1000), body, 1000, 300, guard)
    with pytest.raises(WebhookError) as err:
        verify(SECRET, headers(body, 1000), body, 1001, 300, guard)
    assert err.value.status == 409


@pytest.mark.parametrize(
    ("mutate", "status", "words"),
    [
        (lambda h, b: ({}, b), 401, "missing"),
        (lambda h, b: (h, b + b" "), 401, "does not match"),
        (lambda h, b: ({**h, "x-ctflows-timestamp": "soon"}, b), 401, "unix seconds"),
        (lambda h, b: (headers(b, 1000 - 301), b), 401, "more than 300"),
        (lambda h, b: (headers(b, 1000, "other"), b), 401, "does not match"),
    ],
)
def test_bad_signatures_are_refused(mutate, status, words):
    body = b'{"path": "p", "rev": "r"}'
    h, b = mutate(headers(body, 1000), body)
    with pytest.raises(WebhookError, match=words) as err:
        verify(SECRET, h, b, 1000, 300, ReplayGuard(300))
    assert err.value.status == status


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{nope", 400),
        (b"[1]", 400),
        (b'{"path": "p"}', 422),
        (b'{"path": "p", "rev": 3}', 422),
        (b'{"path": "p", "rev": "r", "md5": "short"}', 422),
    ],
)
def test_malformed_bodies_are_refused(body, status):
    with pytest.raises(WebhookError) as err:
        parse_body(body)
    assert err.value.status == status


def test_idempotency_key_follows_the_data_identity():
    md5 = "a" * 32
    assert Landed("p", "r1", md5).idempotency_key == Landed("q", "r2", md5).idempotency_key
    assert Landed("p", "r1", None).idempotency_key != Landed("p", "r2", None).idempotency_key


def test_replay_guard_forgets_after_the_window():
    guard = ReplayGuard(10)
    assert guard.check_and_add("sig", 0)
    assert not guard.check_and_add("sig", 5)
    assert guard.check_and_add("other", 100)
    assert guard.check_and_add("sig", 100)


def test_replay_memory_survives_a_restart(tmp_path):
    import time

    journal = tmp_path / "accepted.log"
    now = time.time()
    assert ReplayGuard(300, journal).check_and_add("sig", now)
    restarted = ReplayGuard(300, journal)
    assert not restarted.check_and_add("sig", now + 1)
    assert restarted.check_and_add("new", now + 1)

"""APNs: every classification row through the real adapter over HTTP/2 to the sandbox, the
provider token's life, headers and payload size."""
from __future__ import annotations

import json
import secrets
import time

import pytest

from notifier.providers import OutcomeKind
from notifier.providers.apns import CLASSIFICATION, MAX_PAYLOAD_BYTES, ApnsProvider, apns_id
from notifier.providers.base import Delivery
from notifier.settings import get_settings

K = OutcomeKind


def _delivery(token: str, **changes) -> Delivery:
    fields = dict(id=1, notification_id="n-apns", idempotency_key=f"n-apns:push:{token[:16]}", channel="push",
                  provider="apns", target=token, priority="high", category="transactional", type="t",
                  title="Shipped", body="On its way")
    return Delivery(**(fields | changes))


@pytest.fixture(scope="module")
def apns(sandbox) -> ApnsProvider:
    provider = ApnsProvider(get_settings())
    yield provider
    provider.close()


@pytest.mark.parametrize(("status", "reason"), sorted(CLASSIFICATION), ids=lambda v: str(v))
def test_each_answer_is_classified_by_its_row(apns, sandbox, status, reason):
    # Given APNs answering this status and reason once for a device
    token = secrets.token_hex(32)
    sandbox.add_fault("apns", token, status=status, reason=reason, count=1)
    before = sandbox.request_count("apns")

    # When we send to it
    [outcome] = apns.send_batch([_delivery(token)])

    # Then the outcome is the table's, and only ExpiredProviderToken is resent (with a new JWT)
    seen = sandbox.request_count("apns") - before
    if reason == "ExpiredProviderToken":
        assert (outcome.kind, seen) == (K.OK, 2)
        return
    assert outcome.kind is CLASSIFICATION[(status, reason)]
    assert reason in outcome.reason
    assert seen == 1, "a classified answer is never retried inside the adapter"
    if outcome.kind is K.TOKEN_INVALID and status == 410:
        assert outcome.invalid_since is not None  # the 410's timestamp: tokens registered later are kept


def test_retry_after_is_honoured(apns, sandbox):
    token = secrets.token_hex(32)
    sandbox.add_fault("apns", token, status=429, reason="TooManyRequests", retry_after=17, count=1)
    [outcome] = apns.send_batch([_delivery(token)])
    assert (outcome.kind, outcome.retry_after_s) == (K.RETRY, 17.0)


def test_the_provider_token_is_reused_then_refreshed_after_forty_minutes(apns, sandbox):
    first = apns._token.get()
    assert apns._token.get() == first, "one JWT per process, not one per request"
    apns._token._issued_at -= 41 * 60  # as if 41 minutes had passed
    refreshed = apns._token.get()
    assert refreshed != first
    token = secrets.token_hex(32)
    [outcome] = apns.send_batch([_delivery(token)])
    assert outcome.kind is K.OK, "APNs accepts the refreshed token"


def test_a_batch_goes_out_together_and_each_id_is_derived_from_its_key(apns, sandbox):
    tokens = [secrets.token_hex(32) for _ in range(50)]
    deliveries = [_delivery(t, id=i, idempotency_key=f"n-batch:push:{t[:16]}") for i, t in enumerate(tokens)]
    outcomes = apns.send_batch(deliveries)
    assert [o.kind for o in outcomes] == [K.OK] * 50
    assert [o.message_id for o in outcomes] == [apns_id(d.idempotency_key) for d in deliveries]


def test_headers_follow_priority_and_push_type(apns, sandbox):
    high, low, background = (secrets.token_hex(32) for _ in range(3))
    apns.send_batch([
        _delivery(high),
        _delivery(low, priority="low"),
        _delivery(background, data={"background": True}),
    ])
    headers = {t: sandbox.messages("apns", t)[0]["headers"] for t in (high, low, background)}
    assert (headers[high]["apns-priority"], headers[high]["apns-push-type"]) == ("10", "alert")
    assert headers[low]["apns-priority"] == "5"
    assert (headers[background]["apns-priority"], headers[background]["apns-push-type"]) == ("5", "background")
    assert headers[high]["apns-topic"] == get_settings().apns_topic


def test_a_long_body_is_shortened_to_fit_never_refused(apns, sandbox):
    token = secrets.token_hex(32)
    [outcome] = apns.send_batch([_delivery(token, body="é" * 6000, data={"order": "1042"})])
    assert outcome.kind is K.OK
    [message] = sandbox.messages("apns", token)
    payload = message["payload"]
    assert len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()) <= MAX_PAYLOAD_BYTES
    assert payload["aps"]["alert"]["body"].endswith("…") and payload["order"] == "1042"


def test_a_dropped_connection_is_survived(apns, sandbox):
    token = secrets.token_hex(32)
    sandbox.add_fault("apns", token, drop=True, count=1)
    before = sandbox.request_count("apns")
    started = time.monotonic()
    [outcome] = apns.send_batch([_delivery(token)])
    # The transport resends what the server never answered, on a new connection.
    assert outcome.kind is K.OK and time.monotonic() - started < 10
    assert sandbox.request_count("apns") - before == 2
    assert len(sandbox.messages("apns", token)) == 1


# ---- One delivery that cannot be sent never holds up its batch-mates (issue 10)

MALFORMED_TOKENS = {
    "non-ASCII": "café" + secrets.token_hex(30),
    "a fragment": secrets.token_hex(32) + "#x",
    "CR/LF": secrets.token_hex(32) + "\r\nx-injected: yes",
    "a space": secrets.token_hex(32) + " ",
    "a path": "../" + secrets.token_hex(32),
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_TOKENS))
def test_a_malformed_device_token_fails_alone_and_is_never_sent(apns, sandbox, case):
    # Given a batch with a device token that is not hex between two good ones
    bad, good = MALFORMED_TOKENS[case], [secrets.token_hex(32) for _ in range(2)]
    before = sandbox.request_count("apns")

    # When it is sent
    outcomes = apns.send_batch([_delivery(good[0], id=1), _delivery(bad, id=2, idempotency_key="k-bad"),
                                _delivery(good[1], id=3)])

    # Then the bad one ends as APNs would end it (BadDeviceToken: the token is deleted), unsent,
    # with a reason that does not quote it; the others are sent
    assert [o.kind for o in outcomes] == [K.OK, K.TOKEN_INVALID, K.OK]
    assert "BadDeviceToken" in outcomes[1].reason and "not sent" in outcomes[1].reason
    assert not bad or bad[:8] not in outcomes[1].reason
    assert sandbox.request_count("apns") - before == 2
    assert [len(sandbox.messages("apns", t)) for t in good] == [1, 1]
    # Nothing reached the device the token names without its fragment, CR/LF or space
    if case in ("a fragment", "CR/LF", "a space"):
        assert sandbox.messages("apns", bad[:64]) == []


@pytest.mark.parametrize("collapse_id", ["c2\r\nx-injected: yes", "cölläpse", "c\x00", "c\tx"])
def test_a_collapse_id_that_cannot_be_a_header_fails_alone(apns, sandbox, collapse_id):
    bad, good = secrets.token_hex(32), secrets.token_hex(32)
    outcomes = apns.send_batch([_delivery(bad, collapse_id=collapse_id), _delivery(good, collapse_id="order-1042")])
    assert [o.kind for o in outcomes] == [K.FAILED, K.OK]
    assert outcomes[0].reason == "apns: not sent, collapse_id is not printable ASCII"
    assert sandbox.messages("apns", bad) == []
    [message] = sandbox.messages("apns", good)
    assert message["headers"]["apns-collapse-id"] == "order-1042" and "x-injected" not in message["headers"]


def test_a_payload_that_cannot_be_encoded_fails_alone(apns, sandbox):
    bad, good = secrets.token_hex(32), secrets.token_hex(32)
    outcomes = apns.send_batch([_delivery(bad, body="lone surrogate \ud800"), _delivery(good)])
    assert [o.kind for o in outcomes] == [K.FAILED, K.OK]
    assert outcomes[0].reason == "apns: not sent, the payload could not be built (UnicodeEncodeError)"
    assert sandbox.messages("apns", bad) == []


def test_on_outcome_fires_once_per_delivery_in_completion_order_before_send_batch_returns(apns, sandbox):
    # Given a slow device, a fast one, a malformed token, and one whose first answer is ExpiredProviderToken
    slow, fast, expired = (secrets.token_hex(32) for _ in range(3))
    sandbox.add_fault("apns", slow, latency_ms=1200, count=1)
    sandbox.add_fault("apns", expired, status=403, reason="ExpiredProviderToken", count=1)
    deliveries = [_delivery(slow, idempotency_key="k-slow"), _delivery(fast, idempotency_key="k-fast"),
                  _delivery("café", idempotency_key="k-bad"), _delivery(expired, idempotency_key="k-expired")]
    seen: list[tuple[int, OutcomeKind, float]] = []
    started = time.monotonic()

    # When the batch is sent with an on_outcome hook
    outcomes = apns.send_batch(deliveries, lambda i, o: seen.append((i, o.kind, time.monotonic() - started)))

    # Then each delivery was reported exactly once, before send_batch returned, with its final outcome
    assert sorted(i for i, _, _ in seen) == [0, 1, 2, 3]
    assert {i: kind for i, kind, _ in seen} == {i: o.kind for i, o in enumerate(outcomes)}
    assert [o.kind for o in outcomes] == [K.OK, K.OK, K.TOKEN_INVALID, K.OK]
    # ... in completion order: the malformed one at once, the fast one while the slow one was still in
    # flight, then the slow one; the expired one only after its resend, which follows the first round
    assert [i for i, _, _ in seen] == [2, 1, 0, 3]
    at = {i: t for i, _, t in seen}
    assert at[1] < 1.0 and at[0] >= 1.1


def test_an_exception_in_on_outcome_is_logged_and_the_batch_goes_on(apns, sandbox, caplog):
    tokens = [secrets.token_hex(32) for _ in range(5)]
    calls = []

    def failing(index, outcome):
        calls.append(index)
        raise RuntimeError("the database is down")

    outcomes = apns.send_batch([_delivery(t, idempotency_key=f"k-{t[:8]}") for t in tokens], failing)

    assert [o.kind for o in outcomes] == [K.OK] * 5 and sorted(calls) == list(range(5))
    assert "on_outcome callback raised RuntimeError" in caplog.text
    assert all(t not in caplog.text for t in tokens)
    assert all(len(sandbox.messages("apns", t)) == 1 for t in tokens)



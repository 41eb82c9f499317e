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


def test_every_documented_reason_has_a_row():
    documented = {
        "BadCollapseId", "BadDeviceToken", "BadExpirationDate", "BadMessageId", "BadPriority", "BadTopic",
        "DeviceTokenNotForTopic", "DuplicateHeaders", "IdleTimeout", "InvalidPushType", "MissingDeviceToken",
        "MissingTopic", "PayloadEmpty", "TopicDisallowed", "BadCertificate", "BadCertificateEnvironment",
        "ExpiredProviderToken", "Forbidden", "InvalidProviderToken", "MissingProviderToken",
        "BadEnvironmentKeyIdInToken", "BadEnvironmentKeyInToken", "BadPath", "MethodNotAllowed", "ExpiredToken",
        "Unregistered", "PayloadTooLarge", "TooManyProviderTokenUpdates", "TooManyRequests",
        "InternalServerError", "ServiceUnavailable", "Shutdown",
    }
    assert {reason for _, reason in CLASSIFICATION} == documented


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

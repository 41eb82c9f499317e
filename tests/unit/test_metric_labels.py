"""The bounded labels of the metrics: free-form provider and pipeline reasons map to a small fixed set."""
from __future__ import annotations

import pytest

from notifier.ops import counters
from notifier.ops.counters import FAILURE_REASONS, SUPPRESSION_REASONS, failure_reason, suppression_reason

# (outcome kind, reason text as the providers write it, label)
FAILURES = [
    ("token_invalid", "apns 410 Unregistered", "token_invalid"),
    ("token_invalid", "fcm 404 UNREGISTERED", "token_invalid"),
    ("unsubscribed", "sendgrid 400 unsubscribed address", "unsubscribed"),
    ("misconfigured", "apns 403 InvalidProviderToken", "misconfigured"),
    ("misconfigured", "twilio 401 20003 Authenticate", "misconfigured"),
    ("failed", "apns 413 PayloadTooLarge", "payload_too_large"),
    ("failed", "twilio 400 21617 The concatenated message body exceeds the 1600 character limit",
     "payload_too_large"),
    ("failed", "smtp 552 5.3.4 Message size exceeds fixed maximum message size", "payload_too_large"),
    ("retry", "apns 429 TooManyRequests", "rate_limited"),
    ("retry", "fcm 429 QUOTA_EXCEEDED", "rate_limited"),
    ("retry", "twilio 429 20429 Too Many Requests", "rate_limited"),
    ("retry", "transport: timeout after 10000 ms", "timeout"),
    ("retry", "sendgrid transport: ReadTimeout: HTTPSConnectionPool read timed out", "timeout"),
    ("retry", "transport: connect failed: Connection refused", "connection"),
    ("retry", "smtp disconnected: Connection unexpectedly closed", "connection"),
    ("retry", "transport: TLS handshake failed", "connection"),
    ("retry", "sendgrid 500 internal error", "provider_5xx"),
    ("retry", "apns 503 ServiceUnavailable", "provider_5xx"),
    ("retry", "fcm oauth 503 backend error", "provider_5xx"),
    ("retry", "smtp 421 4.7.0 try again later", "provider_4xx"),
    ("failed", "apns 400 BadTopic", "provider_4xx"),
    ("failed", "twilio 400 21211 Invalid 'To' Phone Number", "provider_4xx"),
    ("failed", "apns: not sent, the payload could not be built (TypeError)", "other"),
    ("failed", None, "other"),
]


@pytest.mark.parametrize(("kind", "reason", "label"), FAILURES)
def test_failure_reasons_map_to_a_fixed_set(kind, reason, label):
    assert failure_reason(kind, reason) == label


def test_every_failure_label_is_reachable():
    assert {label for _, _, label in FAILURES} == set(FAILURE_REASONS)


SUPPRESSIONS = [
    ("push disabled by user", "channel_disabled"),
    ("user opted out of category 'marketing'", "category_opted_out"),
    ("email address undeliverable: sendgrid bounce", "address_undeliverable"),
    ("no push target: user has no device token", "no_target"),
    ("cancelled by producer", "cancelled"),
    ("something new", "other"),
    (None, "other"),
]


@pytest.mark.parametrize(("reason", "label"), SUPPRESSIONS)
def test_suppression_reasons_map_to_a_fixed_set(reason, label):
    assert suppression_reason(reason) == label


def test_every_suppression_label_is_reachable():
    assert {label for _, label in SUPPRESSIONS} == set(SUPPRESSION_REASONS)


def test_a_family_refuses_the_wrong_labels_and_a_second_definition():
    tally = counters.Tally()
    with pytest.raises(ValueError, match="expected labels"):
        tally.add(counters.RATE_LIMITED, "push", "extra")
    with pytest.raises(ValueError, match="defined twice"):
        counters.counter("notifier_deliveries_rate_limited", "again", "channel")


def test_every_family_is_named_for_prometheus():
    names = [f.name for f in counters.FAMILIES]
    assert len(names) == len(set(names))
    for family in counters.FAMILIES:
        assert family.name.startswith("notifier_") and not family.name.endswith("_total"), family.name
        if family.buckets:
            assert family.name.endswith("_seconds") and list(family.buckets) == sorted(family.buckets)
    assert 5.0 in counters.LATENCY.buckets, "the high lane's SLO (5 s) must be a bucket bound"

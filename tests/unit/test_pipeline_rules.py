"""The pipeline's rules without a broker or a database: routing plan, filtering, rate limits, outcome → status, backoff.

The end-to-end tests (tests/integration/test_pipeline.py and friends) prove the wiring through
real workers; these pin each rule's branches one by one.
"""
from __future__ import annotations

from datetime import datetime, time, timezone
from types import SimpleNamespace

import pytest

from notifier.intake.events import Channel, NotificationEvent, Priority
from notifier.pipeline.filtering import deferral, suppression_reason
from notifier.pipeline.rate_limits import DEFAULT_LIMITS, DAY, WEEK, Limit, Request, applicable_limit, limit_for, \
    parse_limits, window_key
from notifier.pipeline.routing import NO_TARGET, idempotency_key, plan
from notifier.pipeline.sending import backoff_s, status_after
from notifier.providers.base import OutcomeKind
from notifier.settings import Settings
from notifier.store.models import Status
from notifier.store.recipients import Device, Recipient

NOON_UTC = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def _event(**changes) -> NotificationEvent:
    return NotificationEvent(**{"notification_id": "n-1", "user_id": "u-1", "type": "order_shipped",
                                "category": "transactional", "title": "Shipped", "body": "On its way"} | changes)


def _row(**changes) -> SimpleNamespace:
    return SimpleNamespace(**{"id": 1, "user_id": "u-1", "channel": "push", "category": "transactional",
                              "priority": "normal", "scheduled_at": None} | changes)


# ---- Priority: one enum, its rules on it.

@pytest.mark.parametrize(("priority", "lane", "bypasses"), [
    ("critical", "high", True), ("high", "high", False), ("normal", "low", False), ("low", "low", False),
    ("not-a-priority", "low", False),  # a stored row we do not understand travels as normal
])
def test_priority_gives_the_lane_and_whether_user_limits_apply(priority, lane, bypasses):
    assert Priority.of(priority).lane == lane
    assert Priority.of(priority).bypasses_user_limits is bypasses


def test_there_is_one_channel_enum():
    assert [c.value for c in Channel] == ["push", "email", "sms"]


# ---- Routing plan: one row per target; a channel without one gets one suppressed row.

def test_the_plan_has_a_row_per_device_and_address_with_its_provider():
    recipient = Recipient("u-1", email="ada@example.com",
                          devices=[Device("a" * 64, "ios"), Device("fcm-token", "android"),
                                   Device("https://push.example/w", "web"), Device("x", "blackberry")])
    rows = plan(_event(channels=["push", "email"]), recipient)
    assert [(r["channel"], r["provider"], r["target"], r["status"]) for r in rows] == [
        ("push", "apns", "a" * 64, "queued"), ("push", "fcm", "fcm-token", "queued"),
        ("push", "webpush", "https://push.example/w", "queued"),
        ("email", "sendgrid", "ada@example.com", "queued"),
    ]
    assert {r["idempotency_key"] for r in rows} == {
        idempotency_key("n-1", "push", "a" * 64), idempotency_key("n-1", "push", "fcm-token"),
        idempotency_key("n-1", "push", "https://push.example/w"), idempotency_key("n-1", "email", "ada@example.com"),
    }


def test_a_channel_without_a_target_gets_one_suppressed_row_saying_why():
    rows = plan(_event(channels=["push", "sms"]), Recipient("u-1"))
    assert [(r["channel"], r["target"], r["status"], r["reason"]) for r in rows] == [
        ("push", NO_TARGET, "suppressed", "no push target: user has no device token"),
        ("sms", NO_TARGET, "suppressed", "no sms target: user has no address"),
    ]


def test_without_channels_the_category_decides():
    rows = plan(_event(category="marketing"), Recipient("u-1", email="ada@example.com"))
    assert [r["channel"] for r in rows] == ["email"]


# ---- Filtering: what the user turned off, and what waits.

@pytest.mark.parametrize(("row", "recipient", "reason"), [
    (_row(), Recipient("u-1"), None),
    (_row(), Recipient("u-1", push_enabled=False), "push disabled by user"),
    (_row(category="marketing"), Recipient("u-1", opted_out_categories=frozenset({"marketing"})),
     "user opted out of category 'marketing'"),
    (_row(channel="email"), Recipient("u-1", email_undeliverable="550 no such user"),
     "email address undeliverable: 550 no such user"),
    (_row(channel="push"), Recipient("u-1", email_undeliverable="550 no such user"), None),
])
def test_suppression_reason(row, recipient, reason):
    assert suppression_reason(row, recipient) == reason


def test_send_at_in_the_future_defers_to_it():
    later = datetime(2026, 6, 1, 15, 0, tzinfo=timezone.utc)
    assert deferral(_row(scheduled_at=later), Recipient("u-1"), NOON_UTC) == (later, f"send_at {later.isoformat()}")


def test_quiet_hours_defer_but_not_a_critical_event():
    quiet = Recipient("u-1", quiet_start=time(11, 0), quiet_end=time(13, 0), timezone="UTC")
    deliver_at, note = deferral(_row(), quiet, NOON_UTC)
    assert deliver_at == datetime(2026, 6, 1, 13, 0, tzinfo=timezone.utc)
    assert note.startswith("quiet hours until 2026-06-01T13:00:00+00:00 (UTC)")
    assert deferral(_row(priority="critical"), quiet, NOON_UTC) == (None, None)


# ---- Rate limits: which limit applies, and the window arithmetic.

def test_the_defaults_and_a_configured_table():
    assert parse_limits(None) == parse_limits("") == DEFAULT_LIMITS
    assert parse_limits('[{"channel": "sms", "category": "*", "max_count": 2, "window_s": 60}]') == (
        Limit("sms", "*", 2, 60),)
    with pytest.raises(ValueError, match="NOTIFIER_RATE_LIMITS must be a JSON list"):
        parse_limits('[{"channel": "sms"}]')


def test_an_exact_category_beats_the_wildcard():
    limits = (Limit("email", "*", 100, DAY), Limit("email", "marketing", 10, WEEK))
    assert limit_for(limits, "email", "marketing") == Limit("email", "marketing", 10, WEEK)
    assert limit_for(limits, "email", "social") == Limit("email", "*", 100, DAY)
    assert limit_for(limits, "sms", "social") is None


@pytest.mark.parametrize(("category", "priority", "limited"), [
    ("social", "normal", True), ("security", "normal", False), ("social", "critical", False), ("social", "high", True),
])
def test_security_mail_and_critical_events_are_never_limited(category, priority, limited):
    limit = applicable_limit(DEFAULT_LIMITS, Request("u-1", "push", category, priority))
    assert (limit is not None) is limited


def test_one_counter_per_fixed_window_expiring_a_minute_after_it():
    limit, req = Limit("push", "*", 50, DAY), Request("u-1", "push", "social", "normal")
    key, ttl = window_key(req, limit, 3 * DAY + 5)
    assert key == f"rl:u-1:push:*:{DAY}:3" and ttl == DAY + 60
    assert window_key(req, limit, 4 * DAY - 1)[0] == key
    assert window_key(req, limit, 4 * DAY)[0] != key


# ---- Outcome → status, and the backoff between attempts.

@pytest.mark.parametrize(("kind", "attempts", "status"), [
    (OutcomeKind.OK, 1, Status.SENT), (OutcomeKind.OK, 5, Status.SENT),
    (OutcomeKind.RETRY, 1, Status.SCHEDULED), (OutcomeKind.RETRY, 2, Status.SCHEDULED),
    (OutcomeKind.RETRY, 3, Status.FAILED),
    (OutcomeKind.MISCONFIGURED, 1, Status.SCHEDULED), (OutcomeKind.MISCONFIGURED, 3, Status.FAILED),
    (OutcomeKind.FAILED, 1, Status.FAILED), (OutcomeKind.TOKEN_INVALID, 1, Status.FAILED),
    (OutcomeKind.UNSUBSCRIBED, 1, Status.FAILED),
])
def test_outcome_to_status(kind, attempts, status):
    assert status_after(kind, attempts, max_attempts=3) is status


def test_every_outcome_kind_has_a_status():
    assert {status_after(kind, 1, 3) for kind in OutcomeKind} == {Status.SENT, Status.SCHEDULED, Status.FAILED}


def test_backoff_is_jittered_exponential_never_before_retry_after_and_capped():
    settings = Settings(retry_base_s=1.0, retry_max_s=30.0)
    for attempt in range(1, 8):
        for _ in range(50):
            assert 0 <= backoff_s(attempt, None, settings) <= min(2 ** (attempt - 1), 30.0)
    assert all(backoff_s(1, 7.5, settings) >= 7.5 for _ in range(50))
    assert backoff_s(1, 600.0, settings) == 30.0

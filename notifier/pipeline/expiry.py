"""Expiry: a delivery not handed to its provider by its event's expires_at ends `expired`.

Policy (docs/expiry.md):
- An event's expiry is its `expires_at`, or intake time + its `ttl_s`, or intake time + its
  category's default lifetime (NOTIFIER_CATEGORY_TTL_S, e.g. "security=600"), or none.
- A wait never outlives the delivery: a deferral (quiet hours, send_at, a retry's backoff) is
  due no later than the expiry, so the release finds it then and ends it `expired` with where it
  waited, instead of sending it late or holding a row for nothing.
- Every path that would hand a delivery on checks it: the release of scheduled rows, the filter
  and dedup stages (a backlog in the queue), and the send stage right before the provider call.
  The provider is told too (APNs apns-expiration, FCM ttl): it drops what it cannot deliver in time.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from notifier.intake.events import NotificationEvent
from notifier.intake.validation import MAX_TTL_S
from notifier.store.delivery_log import as_utc


@lru_cache(maxsize=8)
def category_ttls(text: str) -> dict[str, int]:
    """Parse NOTIFIER_CATEGORY_TTL_S ("security=600,social=3600"); ValueError naming the bad item."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        category, sep, seconds = item.partition("=")
        if not sep or not category.strip() or not seconds.strip().isdigit() \
                or not 1 <= int(seconds) <= MAX_TTL_S:
            raise ValueError(f"NOTIFIER_CATEGORY_TTL_S: {item!r}: expected category=seconds, 1 to {MAX_TTL_S}")
        out[category.strip()] = int(seconds)
    return out


def expiry_of(event: NotificationEvent, now: datetime, category_ttl_s: str = "") -> datetime | None:
    """When the event's deliveries expire: its expires_at, now + ttl_s, now + its category's default, or never."""
    if event.expires_at is not None:
        return event.expires_at
    ttl = event.ttl_s if event.ttl_s is not None else category_ttls(category_ttl_s).get(event.category)
    return now + timedelta(seconds=ttl) if ttl else None


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    expires_at = as_utc(expires_at)
    return expires_at is not None and expires_at <= now


def cap(due: datetime, expires_at: datetime | None) -> datetime:
    """A deferral's due time, never past the expiry (the release then ends it `expired`)."""
    expires_at = as_utc(expires_at)
    return min(due, expires_at) if expires_at is not None else due


def waited_in(row: Any) -> str:
    """Where a scheduled delivery waited: a retry's backoff, quiet hours, or send_at (its row's reason says)."""
    if row.attempts:
        return "while retrying"
    reason = row.reason or ""
    if reason.startswith("quiet hours"):
        return "while scheduled (quiet hours)"
    if reason.startswith("send_at"):
        return "while scheduled (send_at)"
    return "while scheduled"


IN_THE_QUEUE = "in the queue"
BEFORE_INTAKE = "before intake (waiting to be consumed)"
# Where it waited -> the `waited` label of notifier_expired_deliveries_total.
METRIC_LABEL = {IN_THE_QUEUE: "queue", "while retrying": "retry", "while scheduled (quiet hours)": "quiet_hours",
                "while scheduled (send_at)": "send_at", "while scheduled": "scheduled",
                BEFORE_INTAKE: "intake"}


def expired_reason(expires_at: datetime, where: str) -> str:
    """The reason an expired delivery's row gives: when, and where it waited."""
    return f"expired at {as_utc(expires_at).isoformat()} {where}"

"""Filter: preferences, schedules, quiet hours and rate limits, before anything is sent."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Mapping, Sequence

import redis
from sqlalchemy import Row
from sqlalchemy.orm import Session

from notifier.ops import counters
from notifier.store import delivery_log
from notifier.intake.events import Priority
from notifier.pipeline import digests, expiry, rate_limits
from notifier.store.models import Status
from notifier.pipeline.quiet_hours import quiet_hours_release
from notifier.store.recipients import Recipient, load_recipients

# A release may run a moment early (clocks, ETA rounding): that is not worth a new deferral.
EARLY_TOLERANCE = timedelta(seconds=1)


# notification_id: the filter task's result names the notifications it handled (store.task_context);
# idempotency_key: the filter task claims what proceeds (sending.claim_rows) from these same rows.
FILTER_COLUMNS = ("id", "notification_id", "user_id", "type", "channel", "category", "priority", "scheduled_at",
                  "expires_at", "idempotency_key")


def suppression_reason(row: Row, recipient: Recipient) -> str | None:
    """Why the user does not want this delivery, or None."""
    if not recipient.channel_enabled(row.channel):
        return f"{row.channel} disabled by user"
    if row.category in recipient.opted_out_categories:
        return f"user opted out of category {row.category!r}"
    if row.channel == "email" and recipient.email_undeliverable:
        return f"email address undeliverable: {recipient.email_undeliverable}"
    return None


def deferral(row: Row, recipient: Recipient, now: datetime) -> tuple[datetime | None, str | None]:
    """When the delivery may go out if not now (send_at, then quiet hours), and any note."""
    due = delivery_log.as_utc(row.scheduled_at)
    if due is not None and due > now + EARLY_TOLERANCE:
        return due, f"send_at {due.isoformat()}"
    if Priority.of(row.priority).bypasses_user_limits:
        return None, None
    if recipient.quiet_end is None and recipient.timezone is None:
        return None, None  # no quiet hours and no zone to note: what quiet_hours_release would say, sooner
    decision = quiet_hours_release(now, recipient.quiet_start, recipient.quiet_end, recipient.timezone)
    if decision.deliver_at is not None:
        tz = recipient.timezone or "UTC"
        return decision.deliver_at, f"quiet hours until {decision.deliver_at.isoformat()} ({tz})" + (
            f"; {decision.note}" if decision.note else ""
        )
    return None, decision.note


def filter_deliveries(
    session: Session, r: redis.Redis, ids: Sequence[int], now: datetime, limits: Sequence[rate_limits.Limit],
    digest_windows: Mapping[str, float] | None = None,
) -> list[int]:
    """Suppress what the user opted out of, hold what a digest takes (digest_windows: category -> seconds),
    defer what is not due, limit the rest; return the ids of what proceeds."""
    return [row.id for row in filter_rows(session, r, ids, now, limits, digest_windows)]


def filter_rows(
    session: Session, r: redis.Redis, ids: Sequence[int], now: datetime, limits: Sequence[rate_limits.Limit],
    digest_windows: Mapping[str, float] | None = None,
) -> list[Row]:
    """filter_deliveries, returning the rows (FILTER_COLUMNS) of what proceeds, still `queued`."""
    rows = delivery_log.load(session, ids, statuses=[Status.QUEUED.value], columns=FILTER_COLUMNS)
    recipients = load_recipients(session, (row.user_id for row in rows), r)
    proceed: list[Row] = []
    changes, candidates, held = [], [], []
    tally = counters.Tally()
    for row in rows:
        if expiry.is_expired(row.expires_at, now):  # it waited in the queue (a backlog) past its expiry
            changes.append({"_id": row.id, "status": Status.EXPIRED.value,
                            "reason": expiry.expired_reason(row.expires_at, expiry.IN_THE_QUEUE)})
            continue
        recipient = recipients[row.user_id]
        reason = suppression_reason(row, recipient)
        if reason:
            changes.append({"_id": row.id, "status": Status.SUPPRESSED.value, "reason": reason})
            tally.add(counters.SUPPRESSED, row.channel, counters.suppression_reason(reason))
            continue
        if digest_windows and digests.holds(row, digest_windows, now):
            held.append(row)  # before quiet hours and rate limits: those apply to the digest
            continue
        due, note = deferral(row, recipient, now)
        if due is not None:
            # Due no later than the expiry: the release ends it `expired` then, saying where it waited.
            changes.append({"_id": row.id, "status": Status.SCHEDULED.value,
                            "scheduled_at": expiry.cap(due, row.expires_at), "reason": note})
            continue
        candidates.append((row, note))
    digests.hold(session, held, digest_windows or {}, now)
    allowed = rate_limits.check(
        r, limits, [rate_limits.Request(row.user_id, row.channel, row.category, row.priority) for row, _ in candidates],
        now.timestamp(),
    )
    for (row, note), ok in zip(candidates, allowed):
        if ok:
            proceed.append(row)
            if note:
                changes.append({"_id": row.id, "reason": note})
        else:
            limit = rate_limits.limit_for(limits, row.channel, row.category)
            tally.add(counters.RATE_LIMITED, row.channel)
            changes.append({
                "_id": row.id, "status": Status.RATE_LIMITED.value,
                "reason": f"over the limit of {limit.max_count} {row.channel} per {limit.window_s}s "
                          f"for category {limit.category!r}",
            })
    delivery_log.record_each(session, changes, only_from=[Status.QUEUED.value])
    counters.count_expired(r, ["queue"] * sum(c.get("status") == Status.EXPIRED.value for c in changes))
    tally.write_after_commit(session, "suppressed and rate-limited counts")
    return proceed

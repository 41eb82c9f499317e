"""Filter: apply each user's preferences to queued deliveries before anything is sent."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

from sqlalchemy.orm import Session

from notifier import delivery_log
from notifier.models import NotificationLog, Status
from notifier.recipients import Recipient, load_recipients


@dataclass(slots=True)
class FilterResult:
    proceed: list[int] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)
    scheduled: list[int] = field(default_factory=list)


def suppression_reason(row: NotificationLog, recipient: Recipient) -> str | None:
    """Why the user does not want this delivery, or None."""
    if not recipient.channel_enabled(row.channel):
        return f"{row.channel} disabled by user"
    if row.category in recipient.opted_out_categories:
        return f"user opted out of category {row.category!r}"
    return None


def filter_deliveries(session: Session, ids: Sequence[int], now: datetime) -> FilterResult:
    """Suppress what the user opted out of, schedule what is not due; return what proceeds."""
    rows = delivery_log.load(session, ids, statuses=[Status.QUEUED.value])
    recipients = load_recipients(session, (r.user_id for r in rows))
    result = FilterResult()
    changes = []
    for row in rows:
        reason = suppression_reason(row, recipients[row.user_id])
        if reason:
            changes.append({"_id": row.id, "status": Status.SUPPRESSED.value, "reason": reason})
            result.suppressed.append(row.id)
            continue
        due = row.scheduled_at
        if due is not None and _aware(due) > now:
            changes.append({"_id": row.id, "status": Status.SCHEDULED.value, "reason": "send_at in the future"})
            result.scheduled.append(row.id)
            continue
        result.proceed.append(row.id)
    delivery_log.record_each(session, changes)
    return result


def _aware(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    from datetime import timezone

    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)

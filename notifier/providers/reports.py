"""What providers' delivery reports do to deliveries and recipients (SendGrid events, Twilio callbacks).

Moves only go forward: queued/scheduled/sending < sent < failed < delivered. A report
never takes a delivered row back to failed, so reports arriving late, twice or out of
order leave the same result. Reports about deliveries we do not know are counted and
logged, never errors: the provider cannot do anything about them.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from notifier.store import delivery_log
from notifier.store.db import session_factory
from notifier.store.models import NotificationLog, Status, UserPreferences
from notifier.store.recipients import invalidate
from notifier.ops.redaction import redact_text
from notifier.store.redis_conn import get_redis
from notifier.accounts.devices import set_preferences

log = logging.getLogger(__name__)

NOT_YET_FINAL = (Status.QUEUED.value, Status.SCHEDULED.value, Status.SENDING.value, Status.SENT.value)
DELIVERED_FROM = (*NOT_YET_FINAL, Status.FAILED.value)
FAILED_FROM = NOT_YET_FINAL


class Effect(str, enum.Enum):
    """What one provider report does."""

    DELIVERED = "delivered"        # the delivery reached the recipient
    FAILED = "failed"              # the delivery will not arrive; nothing wrong with the address
    ADDRESS_DEAD = "address_dead"  # failed, and the address does not exist: mark it undeliverable
    OPT_OUT = "opt_out"            # the recipient does not want email from us: turn email off
    FAILED_OPT_OUT = "failed_opt_out"  # not sent because the recipient opted out at the provider: both
    NOTE = "note"                  # still trying (deferred): record as last_error only
    IGNORE = "ignore"              # engagement and bookkeeping events change nothing


# SendGrid Event Webhook, one row per event type:
# https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
SENDGRID_EVENTS: dict[str, Effect] = {
    "processed": Effect.IGNORE,
    "delivered": Effect.DELIVERED,
    "deferred": Effect.NOTE,
    "bounce": Effect.ADDRESS_DEAD,     # type "blocked" is refined to FAILED below
    "dropped": Effect.FAILED,          # refined by reason below
    "spamreport": Effect.OPT_OUT,
    "unsubscribe": Effect.OPT_OUT,
    "group_unsubscribe": Effect.OPT_OUT,
    "group_resubscribe": Effect.IGNORE,
    "open": Effect.IGNORE,
    "click": Effect.IGNORE,
}
# A bounce of type "blocked" is the receiving server refusing us (IP or content), not a dead address.
SENDGRID_BOUNCE_TYPES: dict[str, Effect] = {"bounce": Effect.ADDRESS_DEAD, "blocked": Effect.FAILED}
# Why SendGrid dropped a message without trying: the reasons that say something about the recipient.
SENDGRID_DROP_REASONS: dict[str, Effect] = {
    "bounced address": Effect.ADDRESS_DEAD,
    "invalid": Effect.ADDRESS_DEAD,
    "unsubscribed address": Effect.FAILED_OPT_OUT,
    "spam reporting address": Effect.FAILED_OPT_OUT,
}

# Twilio Messaging status callbacks, MessageStatus:
# https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
TWILIO_STATUSES: dict[str, Effect] = {
    "accepted": Effect.IGNORE,
    "scheduled": Effect.IGNORE,
    "queued": Effect.IGNORE,
    "sending": Effect.IGNORE,
    "sent": Effect.IGNORE,
    "delivered": Effect.DELIVERED,
    "undelivered": Effect.FAILED,
    "failed": Effect.FAILED,
    "read": Effect.IGNORE,
    "canceled": Effect.IGNORE,
}


@dataclass(slots=True)
class Report:
    """What a batch of provider reports did."""

    applied: int = 0   # changed a delivery or a recipient
    ignored: int = 0   # known delivery, but nothing to change (engagement, or already final)
    unknown: int = 0   # no delivery of ours matches
    opted_out: set[str] = field(default_factory=set)
    undeliverable: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {"applied": self.applied, "ignored": self.ignored, "unknown": self.unknown}


def sendgrid_effect(event: Mapping[str, Any]) -> Effect:
    """Classify one SendGrid event."""
    name = str(event.get("event", ""))
    if name == "bounce":
        return SENDGRID_BOUNCE_TYPES.get(str(event.get("type") or "bounce"), Effect.FAILED)
    if name == "dropped":
        return SENDGRID_DROP_REASONS.get(str(event.get("reason") or "").strip().lower(), Effect.FAILED)
    return SENDGRID_EVENTS.get(name, Effect.IGNORE)


def _event_time(value: Any, default: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return default


def _delivery_id(value: Any) -> int | None:
    try:
        id_ = int(str(value))
    except (TypeError, ValueError):
        return None
    return id_ if 0 < id_ < 2**63 else None


def _text(value: Any, limit: int = 500) -> str:
    """Provider text fit for a database column: no NUL, no lone surrogates, bounded."""
    return str(value)[:limit].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _describe(event: Mapping[str, Any]) -> str:
    name = _text(event.get("event"), 64)
    detail = event.get("reason") or event.get("response") or event.get("status") or ""
    kind = event.get("type")
    text = f"sendgrid {name}" + (f" ({_text(kind, 64)})" if kind and name == "bounce" else "")
    return f"{text}: {_text(detail)}" if detail else text


def apply_sendgrid_events(events: Iterable[Mapping[str, Any]], now: datetime | None = None) -> Report:
    """Apply a batch of SendGrid events (each carries our delivery_id custom arg) to deliveries."""
    now = now or delivery_log.utcnow()
    events = [e for e in events if isinstance(e, Mapping)]
    report = Report()
    with session_factory()() as session, session.begin():
        ids = {i for i in (_delivery_id(e.get("delivery_id")) for e in events) if i is not None}
        rows = {
            row.id: row
            for row in session.scalars(select(NotificationLog).where(NotificationLog.id.in_(ids)))
        } if ids else {}
        opt_outs: dict[str, str] = {}
        for event in events:
            row = rows.get(_delivery_id(event.get("delivery_id")) or 0)
            if row is None or not _is_ours(row, event):
                report.unknown += 1
                log.info("sendgrid event %r for unknown delivery %r ignored",
                         event.get("event"), event.get("delivery_id"))
                continue
            effect = sendgrid_effect(event)
            at = _event_time(event.get("timestamp"), now)
            changed = _apply(session, row, effect, _describe(event), at, report)
            if effect in (Effect.OPT_OUT, Effect.FAILED_OPT_OUT):
                opt_outs[row.user_id] = row.target
                changed = True
            report.applied += changed
            report.ignored += not changed
        confirmed = _current_address_holders(session, opt_outs)
    _after_commit(report, confirmed)
    return report


def _is_ours(row: NotificationLog, event: Mapping[str, Any]) -> bool:
    """A delivery id from another deployment sharing the SendGrid account must not touch our rows."""
    if row.channel != "email":
        return False
    nid = event.get("notification_id")
    if nid is not None and str(nid) != row.notification_id:
        return False
    # SendGrid always names the recipient; an event that does not is not one we can trust with a row.
    email = event.get("email")
    return isinstance(email, str) and email.strip().lower() == row.target.strip().lower()


def _apply(session: Session, row: NotificationLog, effect: Effect, detail: str, at: datetime, report: Report) -> bool:
    """Apply one report's effect to its delivery row (and address); True if anything changed."""
    # A bounce reason quotes the address ("550 <Ada@Example.com>: no such user"): keep it out of
    # the row and the user's undeliverable reason, whatever its letter case.
    detail = redact_text(detail, row.target)
    if effect is Effect.DELIVERED:
        moved = delivery_log.set_status(
            session, [row.id], Status.DELIVERED.value, only_from=DELIVERED_FROM, delivered_at=at, reason=None,
        )
        return bool(moved)
    if effect in (Effect.FAILED, Effect.ADDRESS_DEAD, Effect.FAILED_OPT_OUT):
        moved = delivery_log.set_status(
            session, [row.id], Status.FAILED.value, only_from=FAILED_FROM, failed_at=at, reason=detail,
            last_error=detail,
        )
        marked = effect is Effect.ADDRESS_DEAD and _mark_undeliverable(session, row, detail, at)
        if marked:
            report.undeliverable.add(row.user_id)
        return bool(moved) or marked
    if effect is Effect.NOTE:
        stmt = (
            update(NotificationLog)
            .where(NotificationLog.id == row.id, NotificationLog.status.in_(NOT_YET_FINAL))
            .values(last_error=detail, updated_at=delivery_log.utcnow())
        )
        return session.execute(stmt).rowcount > 0
    return False


def _mark_undeliverable(session: Session, row: NotificationLog, detail: str, at: datetime) -> bool:
    """Mark the user's email address dead, if it is still the address this delivery went to."""
    stmt = (
        update(UserPreferences)
        .where(UserPreferences.user_id == row.user_id, UserPreferences.email == row.target,
               UserPreferences.email_undeliverable_at.is_(None))
        .values(email_undeliverable_at=at, email_undeliverable_reason=detail)
    )
    return session.execute(stmt).rowcount > 0


def _current_address_holders(session: Session, opt_outs: Mapping[str, str]) -> list[str]:
    """Users whose current email is still the one that opted out (an address changed since is not)."""
    if not opt_outs:
        return []
    prefs = session.execute(
        select(UserPreferences.user_id, UserPreferences.email, UserPreferences.email_enabled)
        .where(UserPreferences.user_id.in_(list(opt_outs)))
    ).all()
    return [uid for uid, email, enabled in prefs if enabled and email == opt_outs[uid]]


def _after_commit(report: Report, opt_out_users: list[str]) -> None:
    for user_id in opt_out_users:
        # Through set_preferences, so the recipient cache is dropped like any other preference change.
        set_preferences(user_id, email_enabled=False)
        report.opted_out.add(user_id)
        log.info("user %s opted out of email at the provider; email turned off", user_id)
    if report.undeliverable:
        invalidate(get_redis(), report.undeliverable)


def apply_twilio_status(message_sid: str, status: str, error_code: str | None,
                        now: datetime | None = None) -> Report:
    """Apply one Twilio status callback to the SMS delivery that got this MessageSid."""
    now = now or delivery_log.utcnow()
    report = Report()
    effect = TWILIO_STATUSES.get(status.strip().lower(), Effect.IGNORE)
    with session_factory()() as session, session.begin():
        row = session.scalar(
            select(NotificationLog).where(
                NotificationLog.provider_message_id == message_sid, NotificationLog.channel == "sms"
            ).limit(1)
        )
        if row is None:
            report.unknown += 1
            log.info("twilio status %r for unknown message %r ignored", status, message_sid)
            return report
        detail = f"twilio {_text(status, 32)}" + (f": error {_text(error_code, 32)}" if error_code else "")
        changed = _apply(session, row, effect, detail, now, report)
    report.applied += changed
    report.ignored += not changed
    return report

"""SendGrid's Event Webhook: what each event does to the email delivery it names."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.intake.validation import make_storable
from notifier.providers.reports import Effect, Report, after_commit, apply_effect
from notifier.store import delivery_log
from notifier.store.db import on_shard, shards, transaction
from notifier.store.models import NotificationLog, UserPreferences

log = logging.getLogger(__name__)

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


def _describe(event: Mapping[str, Any]) -> str:
    name = make_storable(event.get("event"), 64)
    detail = event.get("reason") or event.get("response") or event.get("status") or ""
    kind = event.get("type")
    text = f"sendgrid {name}" + (f" ({make_storable(kind, 64)})" if kind and name == "bounce" else "")
    return f"{text}: {make_storable(detail)}" if detail else text


def apply_sendgrid_events(events: Iterable[Mapping[str, Any]], now: datetime | None = None) -> Report:
    """Apply a batch of SendGrid events (each carries our delivery_id custom arg) to deliveries."""
    now = now or delivery_log.utcnow()
    events = [e for e in events if isinstance(e, Mapping)]
    report = Report()
    by_shard: dict[int, list[Mapping[str, Any]]] = {}
    for event in events:  # the shard the send named in its custom args (none: shard 0, or unsharded)
        by_shard.setdefault(_delivery_id(event.get("shard")) or 0, []).append(event)
    for shard, part in by_shard.items():
        if shard not in shards():
            report.unknown += len(part)
            log.info("sendgrid: %d event(s) for unknown shard %r ignored", len(part), shard)
            continue
        with on_shard(shard):
            _apply_on_shard(part, now, report)
    report.count("sendgrid")
    return report


def _apply_on_shard(events: list[Mapping[str, Any]], now: datetime, report: Report) -> None:
    with transaction() as session:
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
            changed = apply_effect(session, row, effect, _describe(event), at, report)
            if effect in (Effect.OPT_OUT, Effect.FAILED_OPT_OUT):
                opt_outs[row.user_id] = row.target
                changed = True
            report.applied += changed
            report.ignored += not changed
        confirmed = _current_address_holders(session, opt_outs)
    after_commit(report, confirmed)


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


def _current_address_holders(session: Session, opt_outs: Mapping[str, str]) -> list[str]:
    """Users whose current email is still the one that opted out (an address changed since is not)."""
    if not opt_outs:
        return []
    prefs = session.execute(
        select(UserPreferences.user_id, UserPreferences.email, UserPreferences.email_enabled)
        .where(UserPreferences.user_id.in_(list(opt_outs)))
    ).all()
    return [uid for uid, email, enabled in prefs if enabled and email == opt_outs[uid]]

"""Twilio's status callbacks: what each MessageStatus does to the SMS delivery it names."""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select

from notifier.intake.validation import make_storable
from notifier.providers.reports import Effect, Report, apply_effect
from notifier.store import delivery_log
from notifier.store.db import shards, transaction
from notifier.store.models import NotificationLog

log = logging.getLogger(__name__)

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


def apply_twilio_status(message_sid: str, status: str, error_code: str | None,
                        now: datetime | None = None) -> Report:
    """Apply one Twilio status callback to the SMS delivery that got this MessageSid."""
    now = now or delivery_log.utcnow()
    report = Report()
    effect = TWILIO_STATUSES.get(status.strip().lower(), Effect.IGNORE)
    # The MessageSid names no user, so no shard: ask each (one indexed look-up per shard).
    for shard in shards():
        with transaction(shard=shard) as session:
            row = session.scalar(
                select(NotificationLog).where(
                    NotificationLog.provider_message_id == message_sid, NotificationLog.channel == "sms"
                ).limit(1)
            )
            if row is None:
                continue
            detail = (f"twilio {make_storable(status, 32)}"
                      + (f": error {make_storable(error_code, 32)}" if error_code else ""))
            changed = apply_effect(session, row, effect, detail, now, report)
        break
    else:
        report.unknown += 1
        log.info("twilio status %r for unknown message %r ignored", status, message_sid)
        report.count("twilio")
        return report
    report.applied += changed
    report.ignored += not changed
    report.count("twilio")
    return report

"""What a provider's delivery report does to a delivery and its recipient (each provider's table is beside its adapter).

Moves only go forward: queued/scheduled/sending < sent < failed < delivered. A report
never takes a delivered row back to failed, so reports arriving late, twice or out of
order leave the same result. Reports about deliveries we do not know are counted and
logged, never errors: the provider cannot do anything about them.
"""
from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from notifier.accounts.preferences import set_preferences
from notifier.ops import counters
from notifier.ops.redaction import redact_text
from notifier.store import delivery_log
from notifier.store.models import NotificationLog, Status, UserPreferences
from notifier.store.recipients import invalidate
from notifier.store.redis_conn import get_redis

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


@dataclass(slots=True)
class Report:
    """What a batch of provider reports did."""

    applied: int = 0   # changed a delivery or a recipient
    ignored: int = 0   # known delivery, but nothing to change (engagement, or already final)
    unknown: int = 0   # no delivery of ours matches
    opted_out: set[str] = field(default_factory=set)
    undeliverable: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)  # counters.WEBHOOK_REPORTS' outcome label

    def as_dict(self) -> dict[str, int]:
        return {"applied": self.applied, "ignored": self.ignored, "unknown": self.unknown}

    def count(self, provider: str) -> None:
        """Add this batch's outcomes to the webhook counters (one Redis round trip)."""
        tally = counters.Tally()
        for outcome, n in (self.outcomes | Counter(unknown=self.unknown)).items():
            tally.add(counters.WEBHOOK_REPORTS, provider, outcome, n=n)
        try:
            tally.write(get_redis(), "webhook counts")
        except Exception as exc:  # noqa: BLE001 - the reports are applied; a metric is not worth a 5xx
            log.warning("metrics: webhook counts not recorded: %s", exc)


# The outcome label of a report that changed something; one that changed nothing is `unchanged`.
OUTCOMES = {Effect.DELIVERED: "delivered", Effect.ADDRESS_DEAD: "bounced", Effect.FAILED: "failed",
            Effect.FAILED_OPT_OUT: "opted_out", Effect.OPT_OUT: "opted_out", Effect.NOTE: "deferred"}


def apply_effect(session: Session, row: NotificationLog, effect: Effect, detail: str, at: datetime, report: Report) -> bool:
    """Apply one report's effect to its delivery row (and address); True if anything changed."""
    changed = _apply_effect(session, row, effect, detail, at, report)
    # An opt-out changes the user's preferences after the commit (the caller's), whatever the row did.
    report.outcomes[OUTCOMES[effect] if changed or effect is Effect.OPT_OUT else "unchanged"] += 1
    return changed


def _apply_effect(session: Session, row: NotificationLog, effect: Effect, detail: str, at: datetime,
                  report: Report) -> bool:
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


def after_commit(report: Report, opt_out_users: list[str]) -> None:
    for user_id in opt_out_users:
        # Through set_preferences, so the recipient cache is dropped like any other preference change.
        set_preferences(user_id, email_enabled=False)
        report.opted_out.add(user_id)
        log.info("user %s opted out of email at the provider; email turned off", user_id)
    if report.undeliverable:
        invalidate(get_redis(), report.undeliverable)

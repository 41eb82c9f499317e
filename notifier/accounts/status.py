"""A notification's deliveries as the HTTP API shows them: targets redacted."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from notifier.store.db import session_factory
from notifier.store.models import NotificationLog
from notifier.ops.redaction import redact_target, redact_text
from notifier.pipeline.routing import NO_TARGET
from notifier.accounts.devices import get_status


redact = redact_target  # the name other modules know


def notification_status(notification_id: str) -> list[dict[str, Any]]:
    """Every delivery of a notification (notifier.accounts.devices.get_status) with a redacted target."""
    deliveries = get_status(notification_id)
    if not deliveries:
        return []
    with session_factory()() as session:
        targets = dict(
            session.execute(
                select(NotificationLog.id, NotificationLog.target).where(
                    NotificationLog.notification_id == notification_id
                )
            ).all()
        )
    return [_redacted(d, targets.get(d["delivery_id"])) for d in deliveries]


def _redacted(delivery: dict[str, Any], target: str | None) -> dict[str, Any]:
    """The delivery with its target redacted, also where a provider's message quotes it."""
    out = delivery | {"target": redact_target(delivery["channel"], target)}
    known = target if target and target != NO_TARGET else None
    for name in ("reason", "last_error"):
        if out.get(name):
            out[name] = redact_text(out[name], known)
    return out

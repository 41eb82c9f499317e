"""A notification's deliveries as the HTTP API shows them: targets redacted."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from notifier.db import session_factory
from notifier.models import NotificationLog
from notifier.routing import NO_TARGET
from notifier.users import get_status


def redact(channel: str, target: str | None) -> str | None:
    """Enough of a target to tell two apart, never the whole device token, address or number."""
    if not target or target == NO_TARGET:
        return None
    if channel == "email" and "@" in target:
        local, _, domain = target.rpartition("@")
        return f"{local[:1]}…@{domain}"
    return f"…{target[-4:]}" if len(target) > 8 else "…"


def notification_status(notification_id: str) -> list[dict[str, Any]]:
    """Every delivery of a notification (notifier.users.get_status) with a redacted target."""
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
    shown = redact(delivery["channel"], target)
    out = delivery | {"target": shown}
    if target and target != NO_TARGET:
        for name in ("reason", "last_error"):
            if out.get(name) and target in out[name]:
                out[name] = out[name].replace(target, shown or "…")
    return out

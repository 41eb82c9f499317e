"""Who a user is to us: preferences, addresses and device tokens, read in batches."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from notifier.models import DeviceToken, UserPreferences


@dataclass(slots=True)
class Device:
    token: str
    platform: str
    registered_at: datetime | None = None


@dataclass(slots=True)
class Recipient:
    """One user's delivery-relevant settings; a user we never heard of gets the defaults."""

    user_id: str
    push_enabled: bool = True
    email_enabled: bool = True
    sms_enabled: bool = True
    email: str | None = None
    phone: str | None = None
    quiet_start: time | None = None
    quiet_end: time | None = None
    timezone: str | None = None
    opted_out_categories: frozenset[str] = frozenset()
    devices: list[Device] = field(default_factory=list)

    def channel_enabled(self, channel: str) -> bool:
        return {"push": self.push_enabled, "email": self.email_enabled, "sms": self.sms_enabled}.get(channel, False)


def load_recipients(session: Session, user_ids: Iterable[str]) -> dict[str, Recipient]:
    """Load every given user's recipient record in two queries."""
    ids = sorted(set(user_ids))
    out = {uid: Recipient(uid) for uid in ids}
    if not ids:
        return out
    for p in session.scalars(select(UserPreferences).where(UserPreferences.user_id.in_(ids))):
        out[p.user_id] = Recipient(
            p.user_id,
            push_enabled=p.push_enabled,
            email_enabled=p.email_enabled,
            sms_enabled=p.sms_enabled,
            email=p.email,
            phone=p.phone,
            quiet_start=p.quiet_start,
            quiet_end=p.quiet_end,
            timezone=p.timezone,
            opted_out_categories=frozenset(p.opted_out_categories or ()),
        )
    rows = session.execute(
        select(DeviceToken.user_id, DeviceToken.token, DeviceToken.platform, DeviceToken.created_at)
        .where(DeviceToken.user_id.in_(ids))
        .order_by(DeviceToken.id)
    )
    for user_id, token, platform, created_at in rows:
        out[user_id].devices.append(Device(token, platform, created_at))
    return out

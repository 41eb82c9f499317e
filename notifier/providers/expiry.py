"""What a provider tells its service about a delivery's expiry (see notifier/pipeline/expiry.py)."""
from __future__ import annotations

import math
from datetime import datetime, timezone

from notifier.providers.base import Delivery


def remaining_ttl_s(delivery: Delivery, now: datetime | None = None, ceiling_s: int | None = None) -> int | None:
    """Whole seconds the delivery has left (0 when past), at most `ceiling_s`; None when it never expires.

    Rounded up: a delivery with half a second left is still worth the attempt (TTL 0 means "now
    or never" to FCM and Web Push, which is what a past expiry asks for too)."""
    if delivery.expires_at is None:
        return None
    left = (delivery.expires_at - (now or datetime.now(timezone.utc))).total_seconds()
    seconds = max(0, math.ceil(left))
    return min(seconds, ceiling_s) if ceiling_s is not None else seconds


def apns_expiration(delivery: Delivery) -> str:
    """The apns-expiration header: the expiry in UNIX seconds, or 0 (try once, do not store) when none.

    https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns"""
    return str(int(delivery.expires_at.timestamp())) if delivery.expires_at is not None else "0"

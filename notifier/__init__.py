"""notifier: notification delivery to APNs, FCM, SendGrid, SMTP and Twilio.

Producers: `from notifier import send_notification; send_notification.delay(event)`.
"""
from __future__ import annotations

from typing import Any

_LAZY = {
    "send_notification": "tasks.pipeline",
    "send_notifications": "tasks.pipeline",
    "register_device": "notifier.accounts.devices",
    "unregister_device": "notifier.accounts.devices",
    "register_web_push": "notifier.accounts.devices",
    "set_preferences": "notifier.accounts.preferences",
    "get_status": "notifier.accounts.status",
    "cancel_notification": "notifier.accounts.status",
    "NotificationEvent": "notifier.intake.events",
    "publish": "notifier.intake.publish",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy, so importing a domain module never drags in Celery and its broker connection.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'notifier' has no attribute {name!r}")

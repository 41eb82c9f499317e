"""Reading a user's preferences as the HTTP API shows them, and changing them from it."""
from __future__ import annotations

from typing import Any


from notifier.db import session_factory
from notifier.models import UserPreferences
from notifier.users import PREFERENCE_FIELDS, set_preferences

# What a user we never heard of gets (the same defaults as notifier.recipients.Recipient).
DEFAULTS: dict[str, Any] = {
    "push_enabled": True, "email_enabled": True, "sms_enabled": True, "email": None, "phone": None,
    "quiet_start": None, "quiet_end": None, "timezone": None, "opted_out_categories": [],
}
UNDELIVERABLE_FIELDS = ("email_undeliverable_at", "email_undeliverable_reason")


def get_preferences(user_id: str) -> dict[str, Any]:
    """A user's preferences, with whether the provider reported their email address dead."""
    with session_factory()() as session:
        prefs = session.get(UserPreferences, user_id)
        if prefs is None:
            return {"user_id": user_id, **DEFAULTS, **dict.fromkeys(UNDELIVERABLE_FIELDS)}
        return {
            "user_id": user_id,
            **{name: getattr(prefs, name) for name in sorted(PREFERENCE_FIELDS)},
            **{name: getattr(prefs, name) for name in UNDELIVERABLE_FIELDS},
        }


def update_preferences(user_id: str, **changes: Any) -> dict[str, Any]:
    """Change some preferences (a new email address drops the undeliverable mark); return them all."""
    set_preferences(user_id, **changes)
    return get_preferences(user_id)

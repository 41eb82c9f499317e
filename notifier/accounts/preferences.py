"""Reading a user's preferences as the HTTP API shows them, and changing them from it."""
from __future__ import annotations

from typing import Any


from notifier.accounts.api_keys import KeyInfo
from notifier.store.db import session_factory
from notifier.store.models import ApiKeyScope, UserPreferences
from notifier.ops.redaction import redact_target, redact_text
from notifier.accounts.devices import PREFERENCE_FIELDS, set_preferences

# What a user we never heard of gets (the same defaults as notifier.store.recipients.Recipient).
DEFAULTS: dict[str, Any] = {
    "push_enabled": True, "email_enabled": True, "sms_enabled": True, "email": None, "phone": None,
    "quiet_start": None, "quiet_end": None, "timezone": None, "opted_out_categories": [],
}
UNDELIVERABLE_FIELDS = ("email_undeliverable_at", "email_undeliverable_reason")
CONTACT_FIELDS = ("email", "phone")


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


def shown_to(key: KeyInfo, prefs: dict[str, Any]) -> dict[str, Any]:
    """`prefs` as this key may see them: email and phone only in part, unless it holds the contacts scope."""
    if key.allows(ApiKeyScope.CONTACTS.value):
        return prefs
    shown = {name: redact_target("email" if name == "email" else "sms", prefs[name]) for name in CONTACT_FIELDS}
    reason = prefs.get("email_undeliverable_reason")
    return prefs | shown | {"email_undeliverable_reason": reason and redact_text(reason, prefs["email"])}

"""A user's preferences: change them, read them, and show them to an API key."""
from __future__ import annotations

import copy
from typing import Any

from notifier.accounts.api_keys import KeyInfo
from notifier.intake import validation
from notifier.ops.redaction import redact_target, redact_text
from notifier.store import delivery_log
from notifier.store.db import shard_for, transaction
from notifier.store.models import ApiKeyScope, UserPreferences
from notifier.store.recipients import Recipient, invalidate
from notifier.store.redis_conn import get_redis

PREFERENCE_FIELDS = validation.PREFERENCE_FIELDS  # the one list, with the rules for each field

# What a user we never heard of gets: the delivery defaults (notifier.store.recipients.Recipient).
_UNKNOWN = Recipient(user_id="")
DEFAULTS: dict[str, Any] = {
    name: sorted(value) if isinstance(value, frozenset) else value
    for name in sorted(PREFERENCE_FIELDS) for value in [getattr(_UNKNOWN, name)]
}
UNDELIVERABLE_FIELDS = ("email_undeliverable_at", "email_undeliverable_reason")
CONTACT_FIELDS = ("email", "phone")


def set_preferences(user_id: str, **changes: Any) -> dict[str, Any]:
    """Change some of a user's preferences; returns them all.

    Raises pydantic.ValidationError naming the field for an unknown preference or a bad value.
    """
    valid = validation.PreferencesChange.model_validate({**changes, "user_id": user_id})
    changes = valid.model_dump(exclude_unset=True)
    user_id = changes.pop("user_id")
    with transaction(shard=shard_for(user_id)) as session:
        prefs = session.get(UserPreferences, user_id)
        if prefs is None:
            prefs = UserPreferences(user_id=user_id, **copy.deepcopy(DEFAULTS))
            session.add(prefs)
        if "email" in changes and changes["email"] != prefs.email:
            # A new address is not the one that bounced.
            prefs.email_undeliverable_at = prefs.email_undeliverable_reason = None
        for name, value in changes.items():
            setattr(prefs, name, list(value) if name == "opted_out_categories" else value)
        prefs.updated_at = delivery_log.utcnow()
        current = {name: getattr(prefs, name) for name in sorted(PREFERENCE_FIELDS)}
    invalidate(get_redis(), [user_id])
    return current


def get_preferences(user_id: str) -> dict[str, Any]:
    """A user's preferences, with whether the provider reported their email address dead."""
    with transaction(shard=shard_for(user_id)) as session:
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

"""A test user with one iOS device (and preferences when given): the setup most pipeline tests start from."""
from __future__ import annotations

import secrets

from notifier import register_device, set_preferences


def ios_user(unique, app: str | None = None, **prefs) -> tuple[str, str]:
    """A new user (named by the run's `unique` fixture) with an APNs token of the `app` (None: default)."""
    user, token = unique("user"), secrets.token_hex(32)
    if prefs:
        set_preferences(user, **prefs)
    register_device(user, token, "ios", app=app)
    return user, token

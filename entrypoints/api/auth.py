"""Bearer API keys on the HTTP API: who may call what (the scopes of notifier.accounts.api_keys)."""
from __future__ import annotations

from typing import Callable

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from notifier.accounts.api_keys import KeyInfo, verify_key
from notifier.store.models import ApiKeyScope

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `notifier keys create`, sent as `Authorization: Bearer <key>`.",
)


def require(*scopes: str) -> Callable[..., KeyInfo]:
    """A dependency admitting live keys holding one of `scopes` (401 without a key, 403 if it holds none)."""

    def dependency(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> KeyInfo:
        if credentials is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        key = verify_key(credentials.credentials)
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not any(key.allows(s) for s in scopes):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this key ({key.scope or 'no scope'}) may not do this: it needs {' or '.join(scopes)}")
        return key

    return dependency


send = require(ApiKeyScope.SEND.value)
read_status = require(ApiKeyScope.STATUS.value)
cancel = require(ApiKeyScope.CANCEL.value)
users = require(ApiKeyScope.USERS.value)
read_users = require(ApiKeyScope.USERS.value, ApiKeyScope.CONTACTS.value)
admin = require(ApiKeyScope.ADMIN.value)

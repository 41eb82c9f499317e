"""Bearer API keys on the HTTP API: who may call what."""
from __future__ import annotations

from typing import Callable

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from notifier.api_keys import KeyInfo, verify_key

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `notifier keys create`, sent as `Authorization: Bearer <key>`.",
)


def require(scope: str) -> Callable[..., KeyInfo]:
    """A dependency admitting live keys whose scope includes `scope` (401 without one, 403 if too weak)."""

    def dependency(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> KeyInfo:
        if credentials is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        key = verify_key(credentials.credentials)
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not key.allows(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"a {key.scope} key may not do this: it needs {scope}")
        return key

    return dependency


producer = require("producer")
admin = require("admin")

"""The Notifier-Signature header: HMAC-SHA256 over "<timestamp>.<body>", as Stripe signs its webhooks.

    Notifier-Signature: t=1764580000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd

A receiver recomputes HMAC-SHA256(secret, f"{t}." + raw body) in hex, compares it in constant
time with v1, and refuses a t older than its tolerance (a replayed request). Several v1 values
may appear (while a secret rotates); one match is enough.
https://docs.stripe.com/webhooks#verify-manually
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Notifier-Signature"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


def new_secret() -> str:
    """A fresh signing secret (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The v1 signature: hex HMAC-SHA256 of "<timestamp>.<body>" under the secret."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Notifier-Signature header value for `body`, signed now (or at `timestamp`)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, body: bytes, value: str | None, *, tolerance_s: int = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> str | None:
    """Why a Notifier-Signature header does not verify (None: it does). For producers' receivers and tests."""
    if not value:
        return "no signature header"
    timestamp, candidates = None, []
    for part in value.split(","):
        name, _, item = part.strip().partition("=")
        if name == "t" and item.isdigit():
            timestamp = int(item)
        elif name == "v1":
            candidates.append(item)
    if timestamp is None or not candidates:
        return "malformed signature header"
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return "timestamp outside the tolerance"
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        return "signature does not match"
    return None

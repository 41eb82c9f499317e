"""SendGrid's Event Webhook signature: ECDSA P-256 / SHA-256 over timestamp + raw body.

https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key


@lru_cache(maxsize=4)
def verification_key(configured: str) -> ec.EllipticCurvePublicKey:
    """Load the configured verification key (PEM or base64 DER); ValueError if it is not EC."""
    text = configured.strip()
    key = load_pem_public_key(text.encode()) if "BEGIN PUBLIC KEY" in text else load_der_public_key(
        base64.b64decode(text, validate=True)
    )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the SendGrid verification key is not an elliptic-curve public key")
    return key


_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


def verify_sendgrid(public_key: str, body: bytes, signature: str | None, timestamp: str | None,
                    max_age_s: float, now: float | None = None) -> str | None:
    """Check a SendGrid Event Webhook signature; return why it is refused, or None if genuine."""
    if not signature or not timestamp:
        return "missing signature or timestamp header"
    # ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses.
    if not _UNIX_SECONDS.fullmatch(timestamp):
        return "timestamp is not unix seconds"
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > max_age_s:
        return "timestamp outside the accepted window (replayed or clock skew)"
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    try:
        verification_key(public_key).verify(raw_signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "signature does not match"
    return None

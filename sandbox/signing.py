"""Sign delivery receipts the way SendGrid and Twilio sign their webhooks.

Shared by the sandbox (which calls the notifier's webhooks as the providers do) and
the tests (which forge or tamper with such calls). Written from the providers' docs,
independently of the verifying code in ``notifier.providers.sendgrid.signature`` and ``notifier.providers.twilio.signature``.

- SendGrid Signed Event Webhook: ECDSA P-256 / SHA-256 over timestamp + raw body,
  base64 DER signature; the verification key is base64 DER SubjectPublicKeyInfo.
  https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
- Twilio request validation: base64 HMAC-SHA1, keyed by the auth token, over the URL
  followed by each POST parameter's name and value, sorted by name.
  https://www.twilio.com/docs/usage/security#validating-requests
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE = "X-Twilio-Signature"


def public_key_b64(private_key: ec.EllipticCurvePrivateKey) -> str:
    """Return the public half as SendGrid shows it: base64 of DER SubjectPublicKeyInfo."""
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_headers(
    private_key: ec.EllipticCurvePrivateKey, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """Return the headers of a signed SendGrid Event Webhook POST carrying body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = private_key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP: ts,
    }


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Return the X-Twilio-Signature of a form POST of params to url."""
    pairs = sorted(set(params.items() if isinstance(params, Mapping) else params))
    data = url + "".join(name + value for name, value in pairs)
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()

"""Apple Push Notification service: HTTP/2 provider API with token (JWT) auth.

Docs:
- https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
- https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns
- https://developer.apple.com/documentation/usernotifications/establishing-a-token-based-connection-to-apns
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import jwt

from notifier.providers.base import Delivery, Outcome, OutcomeKind
from notifier.settings import Settings, get_settings
from notifier.transport import HttpRequest, HttpResponse, Http2Transport

RESPONSES_DOC = "https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns"
MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
# Apple refuses a token refreshed more than once per 20 minutes (429 TooManyProviderTokenUpdates)
# and one older than an hour (403 ExpiredProviderToken): refresh in between.
TOKEN_REFRESH_AFTER_S = 40 * 60
APNS_ID_NAMESPACE = uuid.UUID("6f6e6f74-6966-6965-722d-61706e732d69")

K = OutcomeKind
# (HTTP status, reason) -> outcome kind. One row per documented reason; doc: RESPONSES_DOC.
CLASSIFICATION: dict[tuple[int, str], OutcomeKind] = {
    (400, "BadCollapseId"): K.FAILED,
    (400, "BadDeviceToken"): K.TOKEN_INVALID,
    (400, "BadExpirationDate"): K.FAILED,
    (400, "BadMessageId"): K.FAILED,
    (400, "BadPriority"): K.FAILED,
    (400, "BadTopic"): K.FAILED,
    (400, "DeviceTokenNotForTopic"): K.TOKEN_INVALID,
    (400, "DuplicateHeaders"): K.FAILED,
    (400, "IdleTimeout"): K.RETRY,
    (400, "InvalidPushType"): K.FAILED,
    (400, "MissingDeviceToken"): K.FAILED,
    (400, "MissingTopic"): K.FAILED,
    (400, "PayloadEmpty"): K.FAILED,
    (400, "TopicDisallowed"): K.FAILED,
    (403, "BadCertificate"): K.MISCONFIGURED,
    (403, "BadCertificateEnvironment"): K.MISCONFIGURED,
    (403, "ExpiredProviderToken"): K.RETRY,  # refresh the JWT and retry at once
    (403, "Forbidden"): K.MISCONFIGURED,
    (403, "InvalidProviderToken"): K.MISCONFIGURED,
    (403, "MissingProviderToken"): K.MISCONFIGURED,
    (403, "BadEnvironmentKeyIdInToken"): K.MISCONFIGURED,
    (403, "BadEnvironmentKeyInToken"): K.MISCONFIGURED,
    (404, "BadPath"): K.MISCONFIGURED,
    (405, "MethodNotAllowed"): K.MISCONFIGURED,
    (410, "ExpiredToken"): K.TOKEN_INVALID,
    (410, "Unregistered"): K.TOKEN_INVALID,
    (413, "PayloadTooLarge"): K.FAILED,
    (429, "TooManyProviderTokenUpdates"): K.RETRY,
    (429, "TooManyRequests"): K.RETRY,
    (500, "InternalServerError"): K.RETRY,
    (503, "ServiceUnavailable"): K.RETRY,
    (503, "Shutdown"): K.RETRY,
}


class ProviderToken:
    """The APNs JWT, signed once and reused by the whole process until it is 40 minutes old."""

    def __init__(self, key_pem: bytes, key_id: str, team_id: str) -> None:
        self._key = key_pem
        self._key_id = key_id
        self._team_id = team_id
        self._token: str | None = None
        self._issued_at = 0.0
        self._lock = threading.Lock()

    def get(self, *, force: bool = False) -> str:
        """Return a valid token, signing a new one when due (or when forced)."""
        now = time.time()
        with self._lock:
            if force or self._token is None or now - self._issued_at >= TOKEN_REFRESH_AFTER_S:
                self._issued_at = now
                self._token = jwt.encode(
                    {"iss": self._team_id, "iat": int(now)},
                    self._key,
                    algorithm="ES256",
                    headers={"kid": self._key_id},
                )
            return self._token

    @property
    def age_s(self) -> float:
        return time.time() - self._issued_at


_NAMESPACE_BYTES = APNS_ID_NAMESPACE.bytes


def apns_id(idempotency_key: str) -> str:
    """Derive the delivery's apns-id, the same on every attempt (uuid5, computed without uuid.UUID's overhead)."""
    d = bytearray(hashlib.sha1(_NAMESPACE_BYTES + idempotency_key.encode()).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x50
    d[8] = (d[8] & 0x3F) | 0x80
    h = d.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_payload(d: Delivery) -> bytes:
    """Build the JSON payload, shortening the body so it fits APNs's 4096-byte limit."""
    custom = {k: v for k, v in d.data.items() if k != "aps"}
    aps: dict = {"alert": {"title": d.title, "body": d.body}, "sound": "default"}
    if d.data.get("background"):
        aps = {"content-available": 1}
    raw = json.dumps({"aps": aps, **custom}, separators=(",", ":"), ensure_ascii=False).encode()
    excess = len(raw) - MAX_PAYLOAD_BYTES
    if excess <= 0 or "alert" not in aps:
        return raw
    body = d.body.encode()
    # Cut whole characters; the ellipsis costs 3 bytes and JSON escapes can cost more.
    cut = body[: max(0, len(body) - excess - 3 - 16)].decode(errors="ignore")
    while True:
        aps["alert"]["body"] = cut + "…"
        raw = json.dumps({"aps": aps, **custom}, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) <= MAX_PAYLOAD_BYTES or not cut:
            return raw
        cut = cut[: -max(1, len(raw) - MAX_PAYLOAD_BYTES)]


def classify(resp: HttpResponse) -> Outcome:
    """Turn one APNs response into an outcome (CLASSIFICATION, RESPONSES_DOC)."""
    if resp.status == 200:
        return Outcome.ok(resp.headers.get("apns-id"))
    if resp.status == 0:
        return Outcome.retry(f"transport: {resp.error}")
    try:
        body = json.loads(resp.body or b"{}")
    except ValueError:
        body = {}
    reason = body.get("reason") or f"HTTP {resp.status}"
    kind = CLASSIFICATION.get((resp.status, reason))
    if kind is None:
        kind = K.RETRY if resp.status >= 500 or resp.status == 429 else K.FAILED
    text = f"apns {resp.status} {reason}"
    retry_after = _retry_after(resp.headers.get("retry-after"))
    if kind is K.TOKEN_INVALID:
        since = None
        if "timestamp" in body:
            since = datetime.fromtimestamp(int(body["timestamp"]) / 1000, tz=timezone.utc)
        return Outcome(kind, reason=text, invalid_since=since)
    return Outcome(kind, reason=text, retry_after_s=retry_after)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class ApnsProvider:
    """Send pushes to APNs over one multiplexed HTTP/2 connection per process."""

    name = "apns"

    def __init__(self, settings: Settings | None = None, transport: Http2Transport | None = None) -> None:
        s = settings or get_settings()
        self._origin = s.apns_url.rstrip("/")
        self._topic = s.apns_topic
        self._token = ProviderToken(Path(s.apns_key_path).read_bytes(), s.apns_key_id, s.apns_team_id)
        self._transport = transport or Http2Transport(
            ca_file=s.apns_ca_file or None, timeout_s=s.send_timeout_s
        )

    def _request(self, d: Delivery, bearer: str) -> HttpRequest:
        background = bool(d.data.get("background"))
        headers = {
            "authorization": f"bearer {bearer}",
            "apns-topic": self._topic,
            "apns-push-type": "background" if background else "alert",
            # Background pushes must go at priority 5; low-lane alerts save the device's battery.
            "apns-priority": "5" if background or d.priority in ("normal", "low") else "10",
            "apns-id": apns_id(d.idempotency_key),
            "apns-expiration": str(int(d.expires_at.timestamp())) if d.expires_at else "0",
        }
        if d.collapse_id and len(d.collapse_id.encode()) <= MAX_COLLAPSE_ID_BYTES:
            headers["apns-collapse-id"] = d.collapse_id
        return HttpRequest("POST", f"{self._origin}/3/device/{d.target}", headers, build_payload(d), tag=d)

    def send_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Send every delivery at once; refresh the JWT and resend once on ExpiredProviderToken."""
        bearer = self._token.get()
        outcomes = [classify(r) for r in self._transport.send_all([self._request(d, bearer) for d in deliveries])]
        expired = [i for i, o in enumerate(outcomes) if o.reason == "apns 403 ExpiredProviderToken"]
        if expired:
            bearer = self._token.get(force=True)
            again = self._transport.send_all([self._request(deliveries[i], bearer) for i in expired])
            for i, resp in zip(expired, again):
                outcomes[i] = classify(resp)
        return outcomes

    def close(self) -> None:
        self._transport.close()

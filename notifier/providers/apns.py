"""Apple Push Notification service: HTTP/2 provider API with token (JWT) auth.

Docs:
- https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
- https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns
- https://developer.apple.com/documentation/usernotifications/establishing-a-token-based-connection-to-apns
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import jwt

from notifier.intake.events import Priority
from notifier.providers.base import (
    Delivery, OnOutcome, Outcome, OutcomeKind, classify_safely, printable_ascii, report_outcome, retry_after_s,
)
from notifier.settings import Settings, get_settings
from notifier.store import json_codec
from notifier.providers.expiry import apns_expiration
from notifier.providers.transport import HttpRequest, HttpResponse, Http2Transport

RESPONSES_DOC = "https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns"
MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
# Apple refuses a token refreshed more than once per 20 minutes (429 TooManyProviderTokenUpdates)
# and one older than an hour (403 ExpiredProviderToken): refresh in between.
TOKEN_REFRESH_AFTER_S = 40 * 60
APNS_ID_NAMESPACE = uuid.UUID("6f6e6f74-6966-6965-722d-61706e732d69")
# The device token goes into the URL path, so nothing but hex ever goes there: Apple's
# tokens are hex (32 bytes today, longer possible), and anything else could carry a
# fragment ("#x", which libcurl drops: the push reaches another device), a path or a
# header. The length is left to Apple; the bound only keeps the URL sane.
DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{1,1024}")
EXPIRED_PROVIDER_TOKEN = (403, "ExpiredProviderToken")  # the answer that asks for a new JWT

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


def _full_payload(title: str, body: str, data: dict) -> tuple[dict, dict, bytes]:
    custom = {k: v for k, v in data.items() if k != "aps"}
    aps: dict = {"alert": {"title": title, "body": body}, "sound": "default"}
    if data.get("background"):
        aps = {"content-available": 1}
    return aps, custom, json_codec.dumps_compact({"aps": aps, **custom})


def payload_bytes(title: str, body: str, data: dict) -> int:
    """The payload's size before any shortening: what a rendered template must fit in MAX_PAYLOAD_BYTES."""
    return len(_full_payload(title, body, data)[2])


def build_payload(d: Delivery) -> bytes:
    """Build the JSON payload, shortening the body so it fits APNs's 4096-byte limit."""
    aps, custom, raw = _full_payload(d.title, d.body, d.data)
    excess = len(raw) - MAX_PAYLOAD_BYTES
    if excess <= 0 or "alert" not in aps:
        return raw
    body = d.body.encode()
    # Cut whole characters; the ellipsis costs 3 bytes and JSON escapes can cost more.
    cut = body[: max(0, len(body) - excess - 3 - 16)].decode(errors="ignore")
    while True:
        aps["alert"]["body"] = cut + "…"
        raw = json_codec.dumps_compact({"aps": aps, **custom})
        if len(raw) <= MAX_PAYLOAD_BYTES or not cut:
            return raw
        cut = cut[: -max(1, len(raw) - MAX_PAYLOAD_BYTES)]


def classify(resp: HttpResponse) -> Outcome:
    """Turn one APNs response into an outcome (CLASSIFICATION, RESPONSES_DOC)."""
    if resp.status == 200:
        return Outcome.ok(resp.headers.get("apns-id"))
    if resp.status == 0:
        if resp.unsendable:  # never sent; the same request again cannot do better
            return Outcome.failed(f"apns: {resp.error}")
        return Outcome.retry(f"transport: {resp.error}")
    body = _body(resp)
    reason = _reason(resp, body)
    kind = CLASSIFICATION.get((resp.status, reason))
    if kind is None:
        kind = K.RETRY if resp.status >= 500 or resp.status == 429 else K.FAILED
    text = f"apns {resp.status} {reason}"
    retry_after = retry_after_s(resp.headers.get("retry-after"))
    if kind is K.TOKEN_INVALID:
        return Outcome(kind, reason=text, invalid_since=_invalid_since(body.get("timestamp")))
    return Outcome(kind, reason=text, retry_after_s=retry_after)


def _body(resp: HttpResponse) -> dict:
    try:
        body = json.loads(resp.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(resp: HttpResponse, body: dict) -> str:
    """The answer's documented reason, or "HTTP <status>" when it names none we can show."""
    reason = body.get("reason")
    if not reason or not printable_ascii(reason):
        reason = f"HTTP {resp.status}"
    return reason[:100]


def _asks_for_new_token(resp: HttpResponse) -> bool:
    """True for 403 ExpiredProviderToken: resend with a freshly signed JWT."""
    try:
        return (resp.status, _reason(resp, _body(resp))) == EXPIRED_PROVIDER_TOKEN
    except Exception:  # noqa: BLE001 - an unreadable answer is classified (and settled) as one
        return False


def _invalid_since(timestamp: object) -> datetime | None:
    """The 410's timestamp (ms since the epoch), or None when there is none that reads as one."""
    if timestamp is None or isinstance(timestamp, bool):
        return None
    try:
        return datetime.fromtimestamp(int(timestamp) / 1000, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
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

    def _request(self, index: int, d: Delivery, bearer: str) -> HttpRequest | Outcome:
        """Build the request of one delivery, or the outcome that says why it cannot be sent."""
        try:
            if not (isinstance(d.target, str) and DEVICE_TOKEN.fullmatch(d.target)):
                # What APNs answers for such a token (BadDeviceToken), without sending it.
                return Outcome(CLASSIFICATION[(400, "BadDeviceToken")],
                               reason="apns BadDeviceToken: not sent, the device token is not hex digits")
            background = bool(d.data.get("background"))
            headers = {
                "authorization": f"bearer {bearer}",
                "apns-topic": self._topic,
                "apns-push-type": "background" if background else "alert",
                # Background pushes must go at priority 5; low-lane alerts save the device's battery.
                "apns-priority": "5" if background or Priority.of(d.priority).lane == "low" else "10",
                "apns-id": apns_id(d.idempotency_key),
                "apns-expiration": apns_expiration(d),
            }
            if d.collapse_id:
                # A header value: CR/LF would add headers of the producer's choosing.
                if not printable_ascii(d.collapse_id):
                    return Outcome.failed("apns: not sent, collapse_id is not printable ASCII")
                if len(d.collapse_id) <= MAX_COLLAPSE_ID_BYTES:
                    headers["apns-collapse-id"] = d.collapse_id
        except Exception as exc:  # noqa: BLE001 - one delivery's bad value never fails the batch
            return Outcome.failed(f"apns: not sent, the headers could not be built ({type(exc).__name__})")
        try:
            payload = build_payload(d)
        except Exception as exc:  # noqa: BLE001
            return Outcome.failed(f"apns: not sent, the payload could not be built ({type(exc).__name__})")
        return HttpRequest("POST", f"{self._origin}/3/device/{d.target}", headers, payload, tag=index)

    def send_batch(self, deliveries: Sequence[Delivery], on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Send every delivery at once; refresh the JWT and resend once on ExpiredProviderToken.

        on_outcome: see Provider.send_batch; a delivery answered ExpiredProviderToken is
        reported after its resend, which starts once the first round has all its answers.
        """
        outcomes: list[Outcome | None] = [None] * len(deliveries)

        def settle(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome
            report_outcome(on_outcome, index, outcome)

        try:
            bearer = self._token.get()
        except Exception as exc:  # noqa: BLE001 - an unusable signing key: ours to fix, not the batch's
            outcome = Outcome(K.MISCONFIGURED, reason=f"apns provider token cannot be signed: {type(exc).__name__}")
            for i in range(len(deliveries)):
                settle(i, outcome)
            return outcomes  # type: ignore[return-value]
        expired: list[int] = []

        def first_answer(resp: HttpResponse) -> None:
            outcome = classify_safely(classify, "apns", resp)
            if _asks_for_new_token(resp):
                outcomes[resp.request.tag] = outcome  # not final: resent below with a new JWT
                expired.append(resp.request.tag)
            else:
                settle(resp.request.tag, outcome)

        self._send_all(deliveries, range(len(deliveries)), bearer, settle, first_answer)
        if expired:
            expired.sort()
            bearer = self._token.get(force=True)
            self._send_all(deliveries, expired, bearer, settle,
                           lambda resp: settle(resp.request.tag, classify_safely(classify, "apns", resp)))
        return outcomes  # type: ignore[return-value]

    def _send_all(
        self,
        deliveries: Sequence[Delivery],
        indexes: Iterable[int],
        bearer: str,
        settle: Callable[[int, Outcome], None],
        on_response: Callable[[HttpResponse], None],
    ) -> None:
        """Build and send the deliveries at `indexes`; settle those that cannot be built at once."""
        requests = []
        for i in indexes:
            built = self._request(i, deliveries[i], bearer)
            if isinstance(built, Outcome):
                settle(i, built)
            else:
                requests.append(built)
        self._transport.send_each(requests, on_response)

    def close(self) -> None:
        self._transport.close()

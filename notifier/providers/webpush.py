"""Web Push: a browser's push service, over HTTP/2, with VAPID and encrypted payloads.

A browser's Push API subscription names an endpoint on its vendor's push service (Google's,
Mozilla's, Apple's, Microsoft's: many origins) and the keys to encrypt for. Each delivery is one
POST to the endpoint (RFC 8030 §5) whose body is the payload encrypted for the browser with
aes128gcm (RFC 8291, by pywebpush / http_ece), authorized by a VAPID JWT for the endpoint's
origin (RFC 8292, by py_vapid). The requests ride Http2Transport: one multiplexed connection
per origin, so a batch for three vendors opens three connections and reuses them.

Docs:
- https://www.rfc-editor.org/rfc/rfc8030 (§5 delivery, §5.2 TTL, §5.3 Urgency, §5.4 Topic, §6.2 410)
- https://www.rfc-editor.org/rfc/rfc8291 (message encryption)
- https://www.rfc-editor.org/rfc/rfc8292 (VAPID; §4.2: 403 for a key that is not the subscription's)
- https://autopush.readthedocs.io/en/latest/http.html#error-codes (Mozilla's answers)
- https://developer.apple.com/documentation/usernotifications/sending-web-push-notifications-in-web-apps-and-browsers
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher
from sqlalchemy import select

from notifier.intake.events import Priority
from notifier.providers.expiry import remaining_ttl_s
from notifier.providers.base import (
    Delivery, OnOutcome, Outcome, OutcomeKind, classify_safely, printable_ascii, report_outcome, retry_after_s,
)
from notifier.providers.transport import HttpRequest, HttpResponse, Http2Transport
from notifier.settings import Settings, get_settings
from notifier.store import json_codec
from notifier.store.db import transaction
from notifier.store.models import DeviceToken

RESPONSES_DOC = "https://www.rfc-editor.org/rfc/rfc8030#section-5"
# RFC 8030 §7.2: a push service must accept at least 4096 octets of (encrypted) payload. aes128gcm
# adds a header (salt 16, record size 4, key id length 1, the sender's 65-octet public key), one
# padding delimiter octet and a 16-octet tag (RFC 8188 §2, RFC 8291 §4).
MAX_ENCRYPTED_BYTES = 4096
MAX_PAYLOAD_BYTES = MAX_ENCRYPTED_BYTES - (16 + 4 + 1 + 65) - 1 - 16
# RFC 8292 §2: exp no more than 24 hours ahead. One JWT per origin is signed for 12 hours and reused
# for 6, so a send never carries one about to expire and a worker signs twice a day per vendor.
VAPID_LIFETIME_S = 12 * 3600
VAPID_REUSE_S = 6 * 3600
# RFC 8030 §5.3.
URGENCY = {Priority.CRITICAL: "high", Priority.HIGH: "high", Priority.NORMAL: "normal", Priority.LOW: "low"}
# RFC 8030 §5.4: at most 32 characters of the URL-safe base64 alphabet.
TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
# RFC 8292 §2.1: a contact the push service can reach the operator at.
SUBJECT = re.compile(r"(mailto:[^\s@]+@[^\s@]+|https://\S+)")
NOT_REGISTERED = "webpush: not sent, the subscription is no longer registered"

K = OutcomeKind
# HTTP status -> outcome kind. Push services answer with a status (their bodies differ by vendor);
# one row per status RFC 8030/8292 and the vendors document. Doc: RESPONSES_DOC and the module's links.
CLASSIFICATION: dict[int, OutcomeKind] = {
    201: K.OK,              # RFC 8030 §5: the push message resource was created
    400: K.MISCONFIGURED,   # a header or the encryption we sent is malformed: ours to fix
    401: K.MISCONFIGURED,   # RFC 8292 §4.1: the VAPID JWT is missing, expired or its signature is bad
    403: K.MISCONFIGURED,   # RFC 8292 §4.2: our VAPID key is not the one the browser subscribed with
    404: K.TOKEN_INVALID,   # the subscription is unknown (autopush, FCM): delete it
    410: K.TOKEN_INVALID,   # RFC 8030 §6.2: the subscription expired or the user unsubscribed: delete it
    413: K.FAILED,          # RFC 8030 §7.2: the payload is larger than the service takes
    429: K.RETRY,           # RFC 8030 §8.4: too many requests; honour Retry-After
    500: K.RETRY,
    502: K.RETRY,
    503: K.RETRY,           # the service is unavailable for now; honour Retry-After
    504: K.RETRY,
}

# endpoint -> {"p256dh", "auth"} for the endpoints given; a missing one is no longer registered.
SubscriptionLookup = Callable[[Sequence[str]], Mapping[str, Mapping[str, str]]]


def registered_subscriptions(endpoints: Sequence[str]) -> dict[str, dict[str, str]]:
    """The keys of the registered subscriptions among `endpoints`, in one short read."""
    with transaction() as session:
        rows = session.execute(
            select(DeviceToken.token, DeviceToken.web_push_keys).where(
                DeviceToken.token.in_(sorted(set(endpoints))), DeviceToken.platform == "web")
        ).all()
    return {token: keys for token, keys in rows if isinstance(keys, dict)}


def load_vapid_key(path: Path) -> Vapid02:
    """Read the VAPID private key (EC P-256, PEM). Never generates one: a new key would orphan every
    subscription made with the old one's public key (py_vapid's from_file creates a key when missing)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"VAPID private key {path}: cannot be read ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise ValueError(f"VAPID private key {path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"VAPID private key {path}: expected an EC P-256 key (RFC 8292 §3.2)")
    return Vapid02(key)


def application_server_key(vapid: Vapid02) -> str:
    """The public key browsers subscribe with (PushManager.subscribe's applicationServerKey), base64url."""
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def origin_of(endpoint: str) -> str:
    """The endpoint's origin, the VAPID audience (RFC 8292 §2)."""
    url = urlsplit(endpoint)
    return f"{url.scheme}://{url.netloc}"


def ttl_s(d: Delivery, now: datetime, default_s: int) -> int:
    """Seconds the push service may keep the message for an offline browser (the TTL header):
    until the delivery's expiry (docs/expiry.md), or the configured default when it has none."""
    left = remaining_ttl_s(d, now)
    return default_s if left is None else left


def urgency(priority: str) -> str:
    """RFC 8030 §5.3 Urgency from our priority (an unknown one counts as normal)."""
    return URGENCY[Priority.of(priority)]


def topic(collapse_id: str | None) -> str | None:
    """RFC 8030 §5.4 Topic: the collapse_id as it is when it fits, else a stable 32-character digest of it."""
    if not collapse_id:
        return None
    if TOPIC.fullmatch(collapse_id):
        return collapse_id
    return base64.urlsafe_b64encode(hashlib.blake2b(collapse_id.encode(), digest_size=24).digest()).decode()


def build_payload(d: Delivery) -> bytes:
    """The JSON the browser's service worker reads (event.data.json()), body shortened to fit the 4 KiB."""
    message = {"notification_id": d.notification_id, "type": d.type, "category": d.category,
               "title": d.title, "body": d.body, "data": d.data}
    raw = json_codec.dumps_compact(message)
    excess = len(raw) - MAX_PAYLOAD_BYTES
    if excess <= 0:
        return raw
    body = d.body.encode()
    cut = body[: max(0, len(body) - excess - 3 - 16)].decode(errors="ignore")
    while True:
        message["body"] = cut + "…"
        raw = json_codec.dumps_compact(message)
        if len(raw) <= MAX_PAYLOAD_BYTES or not cut:
            return raw
        cut = cut[: -max(1, len(raw) - MAX_PAYLOAD_BYTES)]


def classify(resp: HttpResponse) -> Outcome:
    """Turn one push service answer into an outcome (CLASSIFICATION)."""
    if resp.status == 0:
        if resp.unsendable:  # never sent; the same request again cannot do better
            return Outcome.failed(f"webpush: {resp.error}")
        return Outcome.retry(f"transport: {resp.error}")
    kind = CLASSIFICATION.get(resp.status)
    if kind is None:
        # Some services answer a success other than 201 (200, 202); any other 5xx is theirs, the rest ours.
        kind = K.OK if 200 <= resp.status < 300 else K.RETRY if resp.status >= 500 else K.FAILED
    if kind is K.OK:
        return Outcome.ok(_message_id(resp.headers.get("location")))
    text = f"webpush {resp.status}{_detail(resp)}"
    return Outcome(kind, reason=text, retry_after_s=retry_after_s(resp.headers.get("retry-after")))


def _message_id(location: str | None) -> str | None:
    """The push message resource's id: the last segment of its Location (RFC 8030 §5), bounded."""
    if not location or not printable_ascii(location):
        return None
    return urlsplit(location).path.rstrip("/").rpartition("/")[2][:128] or None


def _detail(resp: HttpResponse) -> str:
    """The vendor's short explanation (autopush: message, FCM: error), when it reads as one line."""
    try:
        body = json.loads(resp.body or b"{}")
    except ValueError:
        text = resp.body[:100].decode("utf-8", "replace") if resp.body else ""
        return f": {text}" if text and text.isprintable() else ""
    if not isinstance(body, dict):
        return ""
    for name in ("message", "reason", "error"):
        value = body.get(name)
        if isinstance(value, str) and value and value.isprintable():  # one line; stored, never a header
            return f": {value[:100]}"
    return ""



class VapidTokens:
    """One signed VAPID JWT per push service origin, reused by the whole process for 6 hours."""

    def __init__(self, vapid: Vapid02, subject: str, clock: Callable[[], float] = time.time) -> None:
        self._vapid = vapid
        self._subject = subject
        self._clock = clock
        self._by_origin: dict[str, tuple[str, float]] = {}  # origin -> (Authorization value, signed at)
        self._lock = threading.Lock()

    def authorization(self, origin: str) -> str:
        """The Authorization header for a push to `origin`: "vapid t=<JWT>, k=<public key>" (RFC 8292 §3)."""
        now = self._clock()
        with self._lock:
            cached = self._by_origin.get(origin)
            if cached is not None and now - cached[1] < VAPID_REUSE_S:
                return cached[0]
            header = self._vapid.sign({"aud": origin, "sub": self._subject,
                                       "exp": int(now) + VAPID_LIFETIME_S})["Authorization"]
            self._by_origin[origin] = (header, now)
            return header


class WebPushProvider:
    """Send pushes to browsers' push services, one multiplexed HTTP/2 connection per origin."""

    name = "webpush"

    def __init__(self, settings: Settings | None = None, transport: Http2Transport | None = None,
                 subscriptions: SubscriptionLookup | None = None) -> None:
        s = settings or get_settings()
        self._tokens = VapidTokens(load_vapid_key(Path(s.vapid_private_key_file)), s.vapid_subject)
        try:  # py_vapid's own check of `sub` (a mailto: with a domain, or https:), once, here: not per push
            valid_subject = bool(SUBJECT.fullmatch(s.vapid_subject or "")) and bool(
                self._tokens.authorization("https://push.example.com"))
        except Exception:  # noqa: BLE001 - py_vapid raises VapidException for a subject it refuses
            valid_subject = False
        if not valid_subject:
            raise ValueError("vapid_subject: expected mailto:<address> or https://<url> (RFC 8292 §2.1)")
        self._default_ttl_s = s.webpush_default_ttl_s
        self._subscriptions = subscriptions or registered_subscriptions
        self._transport = transport or Http2Transport(ca_file=s.apns_ca_file or None, timeout_s=s.send_timeout_s)

    def _request(self, index: int, d: Delivery, keys: Mapping[str, str] | None, now: datetime) -> HttpRequest | Outcome:
        """Build the request of one delivery, or the outcome that says why it cannot be sent."""
        if keys is None:
            # Unsubscribed since it was routed (another delivery's 410, the user's DELETE): nothing to send to.
            return Outcome(K.TOKEN_INVALID, reason=NOT_REGISTERED)
        try:
            payload = build_payload(d)
        except Exception as exc:  # noqa: BLE001 - one delivery's bad value never fails the batch
            return Outcome.failed(f"webpush: not sent, the payload could not be built ({type(exc).__name__})")
        if len(payload) > MAX_PAYLOAD_BYTES:
            return Outcome.failed(f"webpush: not sent, the payload is {len(payload)} bytes with its data; "
                                  f"at most {MAX_PAYLOAD_BYTES} fit")
        try:
            body = WebPusher({"endpoint": d.target, "keys": dict(keys)}).encode(payload, "aes128gcm")["body"]
        except Exception as exc:  # noqa: BLE001 - stored keys that no longer decode: this delivery only
            return Outcome.failed(f"webpush: not sent, the payload could not be encrypted ({type(exc).__name__})")
        try:
            authorization = self._tokens.authorization(origin_of(d.target))
        except Exception as exc:  # noqa: BLE001 - an unusable key or subject: ours to fix, not the batch's
            return Outcome(K.MISCONFIGURED, reason=f"webpush: the VAPID token cannot be signed ({type(exc).__name__})")
        headers = {
            "authorization": authorization,
            "ttl": str(ttl_s(d, now, self._default_ttl_s)),
            "urgency": urgency(d.priority),
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
        }
        if (t := topic(d.collapse_id)) is not None:
            headers["topic"] = t
        return HttpRequest("POST", d.target, headers, body, tag=index)

    def send_batch(self, deliveries: Sequence[Delivery], on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Send every delivery at once (see Provider.send_batch)."""
        outcomes: list[Outcome | None] = [None] * len(deliveries)

        def settle(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome
            report_outcome(on_outcome, index, outcome)

        try:
            keys = self._subscriptions([d.target for d in deliveries])
        except Exception as exc:  # noqa: BLE001 - the database is down: every delivery tries again later
            for i in range(len(deliveries)):
                settle(i, Outcome.retry(f"webpush: subscriptions cannot be read ({type(exc).__name__})"))
            return outcomes  # type: ignore[return-value]
        now = datetime.now(timezone.utc)
        requests = []
        for i, d in enumerate(deliveries):
            built = self._request(i, d, keys.get(d.target), now)
            if isinstance(built, Outcome):
                settle(i, built)
            else:
                requests.append(built)
        self._transport.send_each(requests, lambda resp: settle(resp.request.tag, classify_safely(classify, "webpush", resp)))
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        self._transport.close()

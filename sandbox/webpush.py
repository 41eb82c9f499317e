"""Play a browser vendor's push service, and the browser behind it (RFC 8030, 8291, 8292).

The control API mints subscriptions as a browser's PushManager.subscribe() would: the sandbox
makes the browser's P-256 key pair and 16-byte auth secret, keeps the private half, and returns
the subscription JSON (endpoint on this server, keys.p256dh, keys.auth). Each push to an endpoint
is checked as a push service checks it — the VAPID JWT (RFC 8292: ES256 signature by the `k=`
key, `aud` the endpoint's origin, `exp` at most 24 hours ahead, `sub` a mailto: or https: contact;
403 when `k` is not the key the subscription was made for), TTL, Urgency, Topic, the payload's
size — then decrypted as the browser would (RFC 8291, http_ece) and its clear text recorded.

    POST   /_sandbox/webpush/subscriptions  {"application_server_key": "<base64url>"|null}  mint one
    DELETE /_sandbox/webpush/subscriptions  {"endpoint": "..."}   the browser unsubscribed: 410 from now on

Without application_server_key the subscription is bound to the sandbox's VAPID key (the one the
local notifier signs with by default); null binds it to none (any valid key is taken).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.h2server import Reply, Request
from sandbox.state import Fault, SandboxState

PROVIDER = "webpush"
PATH = "/wp/"
CONTROL_PATH = "/_sandbox/webpush/subscriptions"
MAX_PAYLOAD = 4096  # RFC 8030 §7.2: what every push service must take; more answers 413
MAX_JWT_AHEAD_S = 24 * 3600  # RFC 8292 §2
URGENCIES = frozenset({"very-low", "low", "normal", "high"})  # RFC 8030 §5.3
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}").fullmatch  # RFC 8030 §5.4
_SUBJECT = re.compile(r"(mailto:[^\s@]+@[^\s@]+|https://\S+)").fullmatch
_SECRET_HEADERS = frozenset({"authorization"})
_JWT_CACHE_SIZE = 1024
STATUS_MESSAGE = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone",
    413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_b64(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """A P-256 key's public point, uncompressed, base64url (the form of p256dh and of VAPID's k=)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return b64url(public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


@dataclass(slots=True)
class Subscription:
    """What the browser keeps of one subscription: its private key and auth secret."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None  # the VAPID public key it was made for; None: any
    gone: bool = False


class WebPushSandbox:
    """A push service: validate like one, decrypt like the browser, record the clear text, inject faults."""

    provider = PROVIDER

    def __init__(self, state: SandboxState, *, application_server_key: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.application_server_key = application_server_key
        self.clock = clock
        self.origin = ""  # https://host:port, set once the server listens
        self.subscriptions: dict[str, Subscription] = {}  # by the endpoint's path id
        # "t|k" -> (why it is refused or None, claims). Verifying ES256 costs more than the rest.
        self._jwt_cache: dict[str, tuple[tuple[int, str] | None, dict[str, Any]]] = {}

    # ---- the browser's side, through the control API
    def mint(self, application_server_key: str | None) -> dict[str, Any]:
        """Subscribe a new browser; return PushSubscription.toJSON()."""
        sub_id = secrets.token_urlsafe(32)
        endpoint = f"{self.origin}{PATH}{sub_id}"
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        self.subscriptions[sub_id] = Subscription(endpoint, private_key, auth, application_server_key)
        return {"endpoint": endpoint, "expirationTime": None,
                "keys": {"p256dh": public_key_b64(private_key), "auth": b64url(auth)}}

    def control(self, method: str, body: bytes) -> tuple[int, Any]:
        """POST mints a subscription; DELETE unsubscribes one (see the module's docstring)."""
        try:
            spec = json.loads(body or b"{}")
        except ValueError:
            raise ValueError("body: not JSON") from None
        if not isinstance(spec, dict):
            raise ValueError("body: expected a JSON object")
        if method == "POST":
            unknown = set(spec) - {"application_server_key"}
            if unknown:
                raise ValueError(f"{sorted(unknown)[0]}: unknown field")
            key = spec.get("application_server_key", self.application_server_key)
            if key is not None and not isinstance(key, str):
                raise ValueError("application_server_key: expected a base64url string or null")
            return 201, self.mint(key)
        if method == "DELETE":
            endpoint = spec.get("endpoint")
            sub = self._subscription(endpoint) if isinstance(endpoint, str) else None
            if sub is None:
                raise ValueError("endpoint: not a subscription of this sandbox")
            sub.gone = True
            return 200, {"endpoint": endpoint, "gone": True}
        raise ValueError(f"method {method}: use POST (mint) or DELETE (unsubscribe)")

    def _subscription(self, endpoint: str) -> Subscription | None:
        prefix = f"{self.origin}{PATH}"
        return self.subscriptions.get(endpoint[len(prefix):]) if endpoint.startswith(prefix) else None

    # ---- the push service's side
    def handle(self, request: Request) -> Reply:
        """Answer one push request."""
        self.state.count_request(PROVIDER)
        endpoint = f"{self.origin}{request.path}"
        fault = self.state.fault_for(PROVIDER, endpoint)
        if fault is not None:
            return self._faulted(request, endpoint, fault)
        return self._process(request, endpoint)

    def _faulted(self, request: Request, endpoint: str, fault: Fault) -> Reply:
        if fault.drop or fault.refuse:
            return Reply(drop=fault.drop, refuse=fault.refuse, delay_s=fault.delay_s)
        if fault.goaway_after == 0:
            return Reply(goaway_after=0)
        if fault.answers_error(201):
            status = fault.status or 400
            reply = self._error(status, fault.reason or STATUS_MESSAGE.get(status, "Error"))
            reply.headers = [*reply.headers, *fault.retry_after_header("retry-after")]
        else:
            reply = self._process(request, endpoint)
        reply.delay_s = fault.delay_s
        reply.goaway_after = fault.goaway_after
        return reply

    def _process(self, request: Request, endpoint: str) -> Reply:
        if request.method != "POST":
            return self._error(405, "push with POST (RFC 8030 §5)")
        sub = self.subscriptions.get(request.path[len(PATH):]) if request.path.startswith(PATH) else None
        if sub is None:
            return self._error(404, "no such subscription")
        if sub.gone:
            return self._error(410, "the subscription has expired or the user unsubscribed")
        headers = request.headers
        refused, claims = self._check_vapid(headers.get("authorization"), sub)
        if refused is not None:
            return self._error(*refused)
        ttl = headers.get("ttl")
        if ttl is None or not ttl.isdigit():
            return self._error(400, "TTL header missing or not a number of seconds (RFC 8030 §5.2)")
        urgency = headers.get("urgency")
        if urgency is not None and urgency not in URGENCIES:
            return self._error(400, "Urgency must be very-low, low, normal or high (RFC 8030 §5.3)")
        topic = headers.get("topic")
        if topic is not None and not _TOPIC(topic):
            return self._error(400, "Topic must be 1 to 32 URL-safe base64 characters (RFC 8030 §5.4)")
        body = request.body
        if len(body) > MAX_PAYLOAD:
            return self._error(413, f"payload of {len(body)} bytes; at most {MAX_PAYLOAD}")
        payload: Any = None
        if body:
            if headers.get("content-encoding") != "aes128gcm":
                return self._error(400, "Content-Encoding must be aes128gcm (RFC 8291)")
            try:
                clear = http_ece.decrypt(body, private_key=sub.private_key, auth_secret=sub.auth,
                                         version="aes128gcm")
            except Exception:  # noqa: BLE001 - anything the browser could not decrypt, it drops
                return self._error(400, "the payload does not decrypt with the subscription's keys (RFC 8291)")
            text = clear.decode("utf-8", "replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
        message_id = uuid.uuid4().hex
        self.state.record(
            PROVIDER, endpoint, message_id,
            {k: v for k, v in headers.items() if k not in _SECRET_HEADERS},
            payload,
            extra={"vapid": {name: claims.get(name) for name in ("aud", "sub", "exp")}},
        )
        return Reply(201, [("location", f"{self.origin}/m/{message_id}"), ("ttl", ttl)])

    def _check_vapid(self, authorization: str | None, sub: Subscription) -> tuple[tuple[int, str] | None, dict]:
        """Why the Authorization is refused ((status, message)) or None, and its claims (RFC 8292 §3, §4)."""
        if not authorization:
            return (401, "Authorization missing: vapid t=<JWT>, k=<public key> (RFC 8292)"), {}
        scheme, _, params = authorization.partition(" ")
        fields = dict(p.strip().partition("=")[::2] for p in params.split(","))
        token, key = fields.get("t", ""), fields.get("k", "")
        if scheme.lower() != "vapid" or not token or not key:
            return (401, "Authorization must be vapid t=<JWT>, k=<public key> (RFC 8292 §3)"), {}
        cache_key = f"{token}|{key}"
        cached = self._jwt_cache.get(cache_key)
        if cached is None:
            cached = self._verify(token, key)
            if len(self._jwt_cache) >= _JWT_CACHE_SIZE:
                self._jwt_cache.clear()
            self._jwt_cache[cache_key] = cached
        refused, claims = cached
        if refused is not None:
            return refused, claims
        now = self.clock()
        exp = claims["exp"]
        if exp <= now:
            return (401, "VAPID JWT expired"), claims
        if exp > now + MAX_JWT_AHEAD_S + 60:
            return (401, "VAPID JWT exp is more than 24 hours ahead (RFC 8292 §2)"), claims
        if sub.application_server_key is not None and key.rstrip("=") != sub.application_server_key.rstrip("="):
            return (403, "the VAPID key is not the applicationServerKey of this subscription (RFC 8292 §4.2)"), claims
        return None, claims

    def _verify(self, token: str, key: str) -> tuple[tuple[int, str] | None, dict[str, Any]]:
        """Check the JWT's signature by k=, its aud (this origin), exp and sub, once per token."""
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(key))
        except (ValueError, TypeError):
            return (401, "k= is not a P-256 public key (RFC 8292 §3.2)"), {}
        try:
            claims = jwt.decode(token, public_key, algorithms=["ES256"], audience=self.origin,
                                options={"require": ["aud", "exp", "sub"], "verify_exp": False})
        except jwt.InvalidAudienceError:
            return (401, f"VAPID JWT aud must be the endpoint's origin {self.origin}"), {}
        except jwt.PyJWTError as exc:
            return (401, f"VAPID JWT refused: {type(exc).__name__}"), {}
        exp, subject = claims.get("exp"), claims.get("sub")
        if isinstance(exp, bool) or not isinstance(exp, int):
            return (401, "VAPID JWT exp must be a number"), claims
        if not isinstance(subject, str) or not _SUBJECT(subject):
            return (401, "VAPID JWT sub must be a mailto: or https: contact (RFC 8292 §2.1)"), claims
        return None, claims

    def _error(self, status: int, message: str) -> Reply:
        # Shaped like Mozilla autopush's errors: https://autopush.readthedocs.io/en/latest/http.html
        body = {"code": status, "error": STATUS_MESSAGE.get(status, "Error"), "message": message}
        return Reply(status, [("content-type", "application/json")],
                     json.dumps(body, separators=(",", ":")).encode())

"""Answer APNs provider API requests the way Apple's servers do.

``POST /3/device/<token>`` with token-based (JWT, ES256) authentication; every
check answers with the status and reason Apple documents:
https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns

Where Apple documents no reason (a payload that is not a JSON object), the
sandbox answers 400 "BadPayload" so the mistake is visible.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.h2server import Reply, Request
from sandbox.state import Fault, SandboxState

PROVIDER = "apns"
DEVICE_PATH = "/3/device/"

# A provider token is valid for an hour; after that APNs answers ExpiredProviderToken.
TOKEN_MAX_AGE_S = 3600
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
# Apple: a connection carries one stream until a request with a valid token arrives.
STREAMS_BEFORE_AUTH = 1

# apns-push-type → the suffix the apns-topic must carry for it.
PUSH_TYPE_TOPIC_SUFFIX = {
    "alert": "",
    "background": "",
    "controls": ".push-type.controls",
    "location": ".location-query",
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "mdm": "",
    "pushtotalk": ".voip-ptt",
    "widgets": ".push-type.widgets",
}
PRIORITIES = frozenset({"10", "5", "1"})

# Default reason for a fault that sets only a status, and vice versa.
STATUS_REASON = {
    400: "BadDeviceToken",
    403: "InvalidProviderToken",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
REASON_STATUS = {
    "BadCollapseId": 400,
    "BadDeviceToken": 400,
    "BadExpirationDate": 400,
    "BadMessageId": 400,
    "BadPriority": 400,
    "BadTopic": 400,
    "DeviceTokenNotForTopic": 400,
    "DuplicateHeaders": 400,
    "IdleTimeout": 400,
    "InvalidPushType": 400,
    "MissingDeviceToken": 400,
    "MissingTopic": 400,
    "PayloadEmpty": 400,
    "TopicDisallowed": 400,
    "BadCertificate": 403,
    "BadCertificateEnvironment": 403,
    "ExpiredProviderToken": 403,
    "Forbidden": 403,
    "InvalidProviderToken": 403,
    "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403,
    "BadEnvironmentKeyIdInToken": 403,
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}

_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64}").fullmatch
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
_JWT_CACHE_SIZE = 1024
# Never recorded: the provider token is a credential.
_SECRET_HEADERS = frozenset({"authorization"})


def load_public_key(key_path: str | Path) -> ec.EllipticCurvePublicKey:
    """Read the EC P-256 private key (.p8, PKCS8 PEM) and return its public half."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{key_path}: expected an EC P-256 private key")
    return key.public_key()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A provider's signing key the sandbox trusts: whose it is, and the topics (bundle ids) it may push to."""

    app: str
    key_id: str
    team_id: str
    public_key: ec.EllipticCurvePublicKey
    topics: tuple[str, ...]


class ApnsSandbox:
    """The APNs provider API: validate like Apple, record what it accepts, inject faults.

    Every request is checked against the app it claims: its topic must be one of the topics of
    the key that signed its JWT (kid), so a delivery sent with another app's credentials is
    refused (TopicDisallowed), and each accepted request is recorded with the app and key id
    that signed it."""

    provider = PROVIDER

    def __init__(
        self,
        state: SandboxState,
        *,
        public_key: ec.EllipticCurvePublicKey,
        key_id: str,
        team_id: str,
        bundle_id: str,
        clock: Callable[[], float] = time.time,
        more_keys: tuple[SigningKey, ...] = (),
    ) -> None:
        self.state = state
        self.public_key = public_key
        self.key_id = key_id
        self.team_id = team_id
        self.bundle_id = bundle_id
        self.clock = clock
        self.keys: dict[str, SigningKey] = {key_id: SigningKey("default", key_id, team_id, public_key, (bundle_id,))}
        for key in more_keys:
            self.keys[key.key_id] = key
        # JWT string → (reason it is invalid or None, iat, kid). Verifying ES256 costs far
        # more than a request; the same token is reused for up to an hour.
        self._jwt_cache: dict[str, tuple[str | None, int, str]] = {}

    def handle(self, request: Request) -> Reply:
        """Answer one request to the provider API."""
        self.state.count_request(PROVIDER)
        path = request.path
        token = path[len(DEVICE_PATH):] if path.startswith(DEVICE_PATH) else None
        fault = self.state.fault_for(PROVIDER, token or "")
        if fault is not None:
            return self._faulted(request, token, fault)
        return self._process(request, token)

    def _faulted(self, request: Request, token: str | None, fault: Fault) -> Reply:
        if fault.drop or fault.refuse:
            return Reply(drop=fault.drop, refuse=fault.refuse, delay_s=fault.delay_s)
        if fault.goaway_after == 0:
            return Reply(goaway_after=0)
        if fault.answers_error(200):
            status = fault.status or REASON_STATUS.get(fault.reason or "", 400)
            reason = fault.reason or STATUS_REASON.get(status, "InternalServerError")
            # A token made invalid by a fault became so when the fault was set, as APNs reports it.
            reply = self._error(status, reason, request, invalid_since=fault.created_at)
            reply.headers = [*reply.headers, *fault.retry_after_header("retry-after")]
            if not request.connection.streams_unlocked:
                reply.unlock_streams = self._check_authorization(request.headers.get("authorization")) is None
        else:
            reply = self._process(request, token)
        reply.delay_s = fault.delay_s
        reply.goaway_after = fault.goaway_after
        return reply

    def _process(self, request: Request, token: str | None) -> Reply:
        if request.method != "POST":
            return self._error(405, "MethodNotAllowed", request)
        if token is None:
            return self._error(404, "BadPath", request)
        if not token:
            return self._error(400, "MissingDeviceToken", request)
        headers = request.headers
        auth_error, key = self._authorize(headers.get("authorization"))
        if auth_error is not None:
            return self._error(403, auth_error, request)
        reply = self._notification(request, token, key)
        if not request.connection.streams_unlocked:
            reply.unlock_streams = True
        return reply

    def _notification(self, request: Request, token: str, key: SigningKey) -> Reply:
        headers = request.headers
        if request.duplicate_headers:
            return self._error(400, "DuplicateHeaders", request)
        apns_id = headers.get("apns-id")
        if apns_id is None:
            apns_id = str(uuid.uuid4())
        elif not _UUID(apns_id):
            return self._error(400, "BadMessageId", request)
        if not _DEVICE_TOKEN(token):
            return self._error(400, "BadDeviceToken", request)
        topic = headers.get("apns-topic")
        if not topic:
            return self._error(400, "MissingTopic", request)
        push_type = headers.get("apns-push-type", "alert")
        suffix = PUSH_TYPE_TOPIC_SUFFIX.get(push_type)
        if suffix is None:
            return self._error(400, "InvalidPushType", request)
        if topic not in {bundle_id + suffix for bundle_id in key.topics}:
            # The signing key's app's topic, but the wrong one for this push type: the token belongs
            # to another topic of the app. Anything else (another app's topic) is not this key's to push to.
            reason = "DeviceTokenNotForTopic" if topic.startswith(key.topics) else "TopicDisallowed"
            return self._error(400, reason, request)
        priority = headers.get("apns-priority")
        if priority is not None and priority not in PRIORITIES:
            return self._error(400, "BadPriority", request)
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return self._error(400, "BadExpirationDate", request)
        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
            return self._error(400, "BadCollapseId", request)
        body = request.body
        if not body:
            return self._error(400, "PayloadEmpty", request)
        if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
            return self._error(413, "PayloadTooLarge", request)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return self._error(400, "BadPayload", request)

        self.state.record(
            PROVIDER,
            token,
            apns_id,
            {k: v for k, v in headers.items() if k not in _SECRET_HEADERS},
            payload,
            {"app": key.app, "key_id": key.key_id, "team_id": key.team_id},
        )
        return Reply(200, [("apns-id", apns_id)])

    def _error(self, status: int, reason: str, request: Request, invalid_since: float | None = None) -> Reply:
        apns_id = request.headers.get("apns-id")
        if apns_id is None or not _UUID(apns_id):
            apns_id = str(uuid.uuid4())
        body: dict[str, Any] = {"reason": reason}
        if status == 410:
            # When APNs learned the token was no longer valid for the topic, in ms.
            body["timestamp"] = int((invalid_since or self.clock()) * 1000)
        return Reply(
            status,
            [("apns-id", apns_id), ("content-type", "application/json")],
            json.dumps(body, separators=(",", ":")).encode(),
        )

    def _check_authorization(self, authorization: str | None) -> str | None:
        """Return why the provider token is refused, or None when it is good."""
        return self._authorize(authorization)[0]

    def _authorize(self, authorization: str | None) -> tuple[str | None, SigningKey]:
        """Return why the provider token is refused (None when it is good), and the key that signed it."""
        default = self.keys[self.key_id]
        if not authorization:
            return "MissingProviderToken", default
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken", default
        cached = self._jwt_cache.get(token)
        if cached is None:
            cached = self._verify_jwt(token)
            if len(self._jwt_cache) >= _JWT_CACHE_SIZE:
                self._jwt_cache.clear()
            self._jwt_cache[token] = cached
        reason, iat, kid = cached
        if reason is not None:
            return reason, default
        now = self.clock()
        if now - iat > TOKEN_MAX_AGE_S:
            return "ExpiredProviderToken", default
        if iat > now + 60:
            return "InvalidProviderToken", default
        return None, self.keys[kid]

    def _verify_jwt(self, token: str) -> tuple[str | None, int, str]:
        """Check signature, kid and iss once per token string; the age is checked per request."""
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid"))
            if header.get("alg") != "ES256" or key is None:
                return "InvalidProviderToken", 0, ""
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=["ES256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
        except (jwt.PyJWTError, TypeError):
            return "InvalidProviderToken", 0, ""
        iat = claims.get("iat")
        if claims.get("iss") != key.team_id or isinstance(iat, bool) or not isinstance(iat, int):
            return "InvalidProviderToken", 0, ""
        return None, iat, key.key_id

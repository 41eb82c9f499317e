"""Answer FCM HTTP v1 requests, and issue the OAuth2 access tokens they need, the way Google does.

``POST /v1/projects/<project>/messages:send`` over HTTP/2 with ``Authorization:
Bearer <access token>``; every refusal is a google.rpc.Status with the details
Google sends (FcmError, ErrorInfo, BadRequest):
https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode
https://firebase.google.com/docs/cloud-messaging/error-codes

The access tokens come from ``OAuthTokenEndpoint``, the token endpoint a service
account's key file names (``token_uri``): it takes the JWT-bearer grant and
checks the assertion as Google's endpoint does:
https://developers.google.com/identity/protocols/oauth2/service-account#httprest
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import http1
from sandbox.h2server import H2Server, Reply, Request, ServerStats
from sandbox.state import Fault, SandboxState

PROVIDER = "fcm"
TOKEN_PROVIDER = "fcm-token"

# The assertion's audience is always Google's token URL, wherever token_uri points.
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPES = frozenset(
    {"https://www.googleapis.com/auth/firebase.messaging", "https://www.googleapis.com/auth/cloud-platform"}
)
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 300
DEFAULT_TOKEN_TTL_S = 3599  # what Google's endpoint answers in expires_in

MAX_PAYLOAD = 4096  # keys and values of data, plus the notification's text
MAX_TTL_S = 28 * 86400

_FCM_V1 = "type.googleapis.com/google.firebase.fcm.v1"
FCM_ERROR = f"{_FCM_V1}.FcmError"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"

_CREDENTIALS_HINT = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_MISSING_CREDENTIALS = f"Request is missing required authentication credential. {_CREDENTIALS_HINT}"
_INVALID_CREDENTIALS = f"Request had invalid authentication credentials. {_CREDENTIALS_HINT}"
_NOT_FOUND = "Requested entity was not found."
_INVALID_ARGUMENT = "Request contains an invalid argument."
_INVALID_TOKEN = "The registration token is not a valid FCM registration token"

# FcmError.errorCode → (HTTP status, google.rpc status, message).
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", _INVALID_ARGUMENT),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "UNREGISTERED": (404, "NOT_FOUND", _NOT_FOUND),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for the message target."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "UNSPECIFIED_ERROR": (500, "INTERNAL", "Internal error encountered."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
}
# google.rpc.ErrorInfo.reason (Google's API front end, not FCM) → (HTTP status, google.rpc status, message).
ERROR_INFO_REASONS: dict[str, tuple[int, str, str]] = {
    "CREDENTIALS_MISSING": (401, "UNAUTHENTICATED", _MISSING_CREDENTIALS),
    "ACCESS_TOKEN_EXPIRED": (401, "UNAUTHENTICATED", _INVALID_CREDENTIALS),
    "ACCESS_TOKEN_SCOPE_INSUFFICIENT": (403, "PERMISSION_DENIED", "Request had insufficient authentication scopes."),
    "SERVICE_DISABLED": (403, "PERMISSION_DENIED", "Firebase Cloud Messaging API has not been used in this project "
                                                   "before or it is disabled."),
    "RATE_LIMIT_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests' and limit "
                                                       "'Send requests per minute' of service 'fcm.googleapis.com'."),
}  # fmt: skip
_PERMISSION_DENIED = (403, "PERMISSION_DENIED", "The caller does not have permission")
# A bare google.rpc status (no details) → (HTTP status, message).
RPC_STATUSES: dict[str, tuple[int, str]] = {
    "UNAUTHENTICATED": (401, _INVALID_CREDENTIALS),
    "PERMISSION_DENIED": (403, "The caller does not have permission"),
    "NOT_FOUND": (404, _NOT_FOUND),
    "RESOURCE_EXHAUSTED": (429, "Resource has been exhausted (e.g. check quota)."),
}
# The reason of a fault that sets only a status.
STATUS_REASON = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "UNREGISTERED",
    410: "UNREGISTERED",  # SandboxClient.unregister speaks APNs: 410 Unregistered
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_RPC_STATUS_OF_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                       409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                       504: "DEADLINE_EXCEEDED"}  # fmt: skip

_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send").fullmatch
# Registration tokens are opaque; these are the characters and lengths seen in practice.
_REGISTRATION_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{32,4096}").fullmatch
_TOPIC = re.compile(r"[a-zA-Z0-9\-_.~%]{1,900}").fullmatch
_DURATION = re.compile(r"(\d{1,12})(\.\d{1,9})?s").fullmatch
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition"}
)
_NOTIFICATION_FIELDS = frozenset({"title", "body", "image"})
_ANDROID_FIELDS = frozenset({
    "collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification", "fcm_options",
    "direct_boot_ok", "bandwidth_constrained_ok", "restricted_satellite_ok",
})  # fmt: skip
_ANDROID_PRIORITIES = frozenset({"NORMAL", "HIGH", 0, 1})
# Never recorded: the access token is a credential.
_SECRET_HEADERS = frozenset({"authorization"})
_JSON = ("content-type", "application/json; charset=UTF-8")


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What the token endpoint knows of the one service account it serves."""

    client_email: str
    private_key_id: str
    public_key: rsa.RSAPublicKey


def load_service_account(path: str | Path) -> ServiceAccount:
    """Read a service-account key JSON and keep the public half of its key."""
    account = json.loads(Path(path).read_text())
    key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: expected an RSA private key")
    return ServiceAccount(account["client_email"], account.get("private_key_id", ""), key.public_key())


@dataclass(frozen=True, slots=True)
class Grant:
    """An access token the sandbox issued, and the service account (and so the project and app) it was for."""

    expires_at: float
    scopes: frozenset[str]
    client_email: str = ""
    project_id: str = ""
    app: str = "default"


@dataclass(frozen=True, slots=True)
class Trusted:
    """A service account the token endpoint serves: the project it may send for, and its app."""

    account: ServiceAccount
    project_id: str
    app: str


class OAuthTokenEndpoint:
    """Google's OAuth2 token endpoint for one service account: the JWT-bearer grant (served over HTTPS, HTTP/1.1)."""

    provider = TOKEN_PROVIDER

    def __init__(
        self, state: SandboxState, *, ttl_s: int = DEFAULT_TOKEN_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.ttl_s = ttl_s
        self.clock = clock
        self.account: ServiceAccount | None = None  # the default app's
        self.accounts: dict[str, Trusted] = {}  # client_email -> every service account served
        self.grants: dict[str, Grant] = {}

    def trust(self, account: ServiceAccount, project_id: str = "", app: str = "default") -> None:
        """Serve tokens to this service account, for sending to `project_id` as `app`."""
        if app == "default":
            self.account = account
        self.accounts[account.client_email] = Trusted(account, project_id, app)

    def grant_of(self, access_token: str) -> Grant | None:
        return self.grants.get(access_token)

    def handle(self, request: http1.Request) -> http1.Reply:
        """Answer one token request, or the fault armed for its service account."""
        self.state.count_request(TOKEN_PROVIDER)
        form = {k: v[-1] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        fault = self.state.fault_for(TOKEN_PROVIDER, _unverified_issuer(form.get("assertion")))
        if fault is None:
            status, payload = self.token_request(request.method, request.path, form)
            return _oauth_reply(status, payload)
        if fault.drop or fault.refuse:
            return http1.Reply(drop=True, delay_s=fault.delay_s)
        if fault.status or fault.reason:
            status = fault.status or 400
            error = fault.reason or ("internal_failure" if status >= 500 else "invalid_grant")
            reply = _oauth_reply(status, {"error": error, "error_description": "sandbox fault"})
        else:
            reply = _oauth_reply(*self.token_request(request.method, request.path, form))
        reply.headers += fault.retry_after_header()
        reply.delay_s = fault.delay_s
        return reply

    def token_request(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer one token request: (status, JSON body), as Google's endpoint words it."""
        if path != "/token":
            return 404, {"error": "not_found", "error_description": f"{path}: no such endpoint"}
        if method != "POST":
            return 405, {"error": "invalid_request", "error_description": "Only POST is supported"}
        grant_type = form.get("grant_type")
        if grant_type != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant_type}"}
        assertion = form.get("assertion")
        if not assertion:
            return 400, {"error": "invalid_request", "error_description": "Missing required parameter: assertion"}
        refusal, scopes, trusted = self._check_assertion(assertion)
        if refusal is not None:
            return 400, refusal
        access_token = "ya29.sandbox-" + secrets.token_urlsafe(48)
        now = self.clock()
        if len(self.grants) > 10_000:
            self.grants = {t: g for t, g in self.grants.items() if g.expires_at > now}
        self.grants[access_token] = Grant(now + self.ttl_s, scopes, trusted.account.client_email,  # type: ignore
                                          trusted.project_id, trusted.app)  # type: ignore[union-attr]
        return 200, {"access_token": access_token, "expires_in": self.ttl_s, "token_type": "Bearer"}

    def _check_assertion(self, assertion: str) -> tuple[dict[str, str] | None, frozenset[str], Trusted | None]:
        def invalid_grant(description: str) -> tuple[dict[str, str], frozenset[str], None]:
            return {"error": "invalid_grant", "error_description": description}, frozenset(), None

        trusted = self.accounts.get(_unverified_issuer(assertion))
        if trusted is None:
            return invalid_grant("Invalid grant: account not found")
        account = trusted.account
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("alg") != "RS256":
                return invalid_grant("Invalid JWT Signature.")
            if header.get("kid") not in (None, account.private_key_id):
                return invalid_grant("Invalid JWT Signature.")
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
        except jwt.PyJWTError:
            return invalid_grant("Invalid JWT Signature.")
        if claims.get("iss") != account.client_email:
            return invalid_grant("Invalid grant: account not found")
        if claims.get("aud") != GOOGLE_TOKEN_URL:
            return invalid_grant("Invalid JWT: Failed audience check.")
        iat, exp, now = claims.get("iat"), claims.get("exp"), self.clock()
        if (
            not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp))
            or exp <= iat
            or exp - iat > MAX_ASSERTION_LIFETIME_S
            or iat > now + CLOCK_SKEW_S
            or exp < now - CLOCK_SKEW_S
        ):
            return invalid_grant(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim."
            )
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            description = "Invalid OAuth scope or ID token audience provided."
            return {"error": "invalid_scope", "error_description": description}, frozenset(), None
        return None, frozenset(scope.split()), trusted


def _oauth_reply(status: int, payload: dict[str, Any]) -> http1.Reply:
    headers = [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-cache, no-store")]
    return http1.Reply(status, headers, json.dumps(payload).encode())


def _unverified_issuer(assertion: str | None) -> str:
    """Return the assertion's iss, unchecked: what a token-endpoint fault's target matches."""
    try:
        return str(jwt.decode(assertion or "", options={"verify_signature": False}).get("iss", ""))
    except jwt.PyJWTError:
        return ""


class FcmSandbox:
    """The FCM HTTP v1 send API: check like Google, record what it accepts, inject faults."""

    provider = PROVIDER

    def __init__(
        self,
        state: SandboxState,
        *,
        tokens: OAuthTokenEndpoint,
        project_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.tokens = tokens
        self.project_id = project_id
        self.clock = clock

    @property
    def projects(self) -> set[str]:
        """Every project this sandbox serves: the default one and each trusted app's."""
        return {self.project_id} | {t.project_id for t in self.tokens.accounts.values() if t.project_id}

    def handle(self, request: Request) -> Reply:
        """Answer one request to the send API."""
        self.state.count_request(PROVIDER)
        fault = self.state.fault_for(PROVIDER, _target_of(request.body))
        if fault is not None:
            return self._faulted(request, fault)
        return self._process(request)

    def _faulted(self, request: Request, fault: Fault) -> Reply:
        if fault.drop or fault.refuse:
            return Reply(drop=fault.drop, refuse=fault.refuse, delay_s=fault.delay_s)
        if fault.goaway_after == 0:
            return Reply(goaway_after=0)
        if fault.answers_error(200):
            reply = fault_reply(fault.status, fault.reason)
            reply.headers = [*reply.headers, *fault.retry_after_header("retry-after")]
        else:
            reply = self._process(request)
        reply.delay_s = fault.delay_s
        reply.goaway_after = fault.goaway_after
        return reply

    def _process(self, request: Request) -> Reply:
        match = _SEND_PATH(request.path)
        if match is None or request.method != "POST":
            return error_reply(404, "NOT_FOUND", _NOT_FOUND)
        grant, refusal = self._authorize(request.headers.get("authorization"))
        if refusal is not None:
            return refusal
        project = match.group(1)
        if project not in self.projects:
            return error_reply(404, "NOT_FOUND", _NOT_FOUND)
        if grant.project_id and grant.project_id != project:  # type: ignore[union-attr]
            # A token of another project's service account: Google's answer to a caller without the permission.
            return error_reply(*_PERMISSION_DENIED)
        try:
            body = json.loads(request.body)
        except ValueError:
            return _invalid("", "Invalid JSON payload received. Unexpected token.")
        if not isinstance(body, dict):
            return _invalid("", "Invalid JSON payload received. Expected an object.")
        unknown = set(body) - {"message", "validate_only", "validateOnly"}
        if unknown:
            return _unknown_name(sorted(unknown)[0], "")
        message = body.get("message")
        if not isinstance(message, dict):
            return _recipient_missing()
        refusal = check_message(message)
        if refusal is not None:
            return refusal
        validate_only = body.get("validate_only", body.get("validateOnly")) is True
        if validate_only:
            return Reply(200, [_JSON], json.dumps({"name": f"projects/{project}/messages/fake_message_id"}).encode())
        name = f"projects/{project}/messages/0:{int(self.clock() * 1e6)}%{secrets.token_hex(8)}"
        target = message.get("token") or message.get("topic") or message.get("condition")
        self.state.record(
            PROVIDER,
            target,
            name,
            {k: v for k, v in request.headers.items() if k not in _SECRET_HEADERS},
            body,
            {"app": grant.app, "project_id": project, "client_email": grant.client_email},  # type: ignore[union-attr]
        )
        return Reply(200, [_JSON], json.dumps({"name": name}).encode())

    def _check_authorization(self, authorization: str | None) -> Reply | None:
        """Refuse a request without a live access token from our token endpoint, as Google's front end does."""
        return self._authorize(authorization)[1]

    def _authorize(self, authorization: str | None) -> tuple[Grant | None, Reply | None]:
        """The grant of the request's access token, or the refusal Google's front end answers."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, error_reply(401, "UNAUTHENTICATED", _MISSING_CREDENTIALS, _error_info("CREDENTIALS_MISSING"))
        grant = self.tokens.grant_of(token.strip())
        if grant is None:
            return None, error_reply(401, "UNAUTHENTICATED", _INVALID_CREDENTIALS)
        if grant.expires_at <= self.clock():
            return None, error_reply(401, "UNAUTHENTICATED", _INVALID_CREDENTIALS,
                                     _error_info("ACCESS_TOKEN_EXPIRED"))
        if not grant.scopes & FCM_SCOPES:
            status, rpc, text = ERROR_INFO_REASONS["ACCESS_TOKEN_SCOPE_INSUFFICIENT"]
            return None, error_reply(status, rpc, text, _error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT"))
        return grant, None


def check_message(message: dict[str, Any]) -> Reply | None:
    """Return the 400 FCM gives this message, or None when it is well-formed."""
    message = _snake_keys(message)
    unknown = set(message) - _MESSAGE_FIELDS
    if unknown:
        return _unknown_name(sorted(unknown)[0], "message")
    targets = [name for name in ("token", "topic", "condition") if message.get(name) not in (None, "")]
    if not targets:
        return _recipient_missing()
    if len(targets) > 1:
        text = f"Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set '{targets[1]}'"
        return _invalid("message", text)
    target = targets[0]
    value = message[target]
    if not isinstance(value, str):
        return _invalid_value(f"message.{target}", "TYPE_STRING", value)
    if target == "token" and not _REGISTRATION_TOKEN(value):
        return error_reply(400, "INVALID_ARGUMENT", _INVALID_TOKEN, _fcm_error("INVALID_ARGUMENT"))
    if target == "topic" and not _TOPIC(value.removeprefix("/topics/")):
        return _invalid("message.topic", "Invalid topic name", fcm=True)
    size = 0
    data = message.get("data")
    if data is not None:
        if not isinstance(data, dict):
            return _invalid_value("message.data", "Map", data)
        for i, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                return _invalid_value(f"message.data[{i}].value", "TYPE_STRING", value)
            lowered = key.lower()
            if lowered in ("from", "message_type") or lowered.startswith(("google", "gcm")):
                return _invalid("message.data", f"Invalid data payload key: {key}", fcm=True)
            size += len(key.encode()) + len(value.encode())
    notification = message.get("notification")
    if notification is not None:
        refusal = _check_strings(notification, _NOTIFICATION_FIELDS, "message.notification")
        if refusal is not None:
            return refusal
        size += sum(len(notification.get(k, "").encode()) for k in ("title", "body"))
    android = message.get("android")
    if android is not None:
        refusal = _check_android(android)
        if refusal is not None:
            return refusal
    for name in ("apns", "webpush"):
        refusal = _check_relay_headers(message.get(name), f"message.{name}")
        if refusal is not None:
            return refusal
    if size > MAX_PAYLOAD:
        # What Google answers, details and all (none): pushiko's recorded FCM responses.
        return error_reply(400, "INVALID_ARGUMENT", _INVALID_ARGUMENT)
    return None


def _check_android(android: Any) -> Reply | None:
    if not isinstance(android, dict):
        return _invalid_value("message.android", "AndroidConfig", android)
    android = _snake_keys(android)
    unknown = set(android) - _ANDROID_FIELDS
    if unknown:
        return _unknown_name(sorted(unknown)[0], "message.android")
    priority = android.get("priority")
    if priority is not None and (isinstance(priority, bool) or priority not in _ANDROID_PRIORITIES):
        return _invalid_value("message.android.priority", f"{_FCM_V1}.AndroidMessagePriority", priority)
    ttl = android.get("ttl")
    if ttl is not None:
        match = _DURATION(ttl) if isinstance(ttl, str) else None
        if match is None or int(match.group(1)) > MAX_TTL_S:
            return _invalid_value("message.android.ttl", "type.googleapis.com/google.protobuf.Duration", ttl)
    for name in ("collapse_key", "restricted_package_name"):
        value = android.get(name)
        if value is not None and not isinstance(value, str):
            return _invalid_value(f"message.android.{name}", "TYPE_STRING", value)
    data = android.get("data")
    if data is not None and not (isinstance(data, dict) and all(isinstance(v, str) for v in data.values())):
        return _invalid_value("message.android.data", "Map", data)
    return None


def _check_relay_headers(config: Any, where: str) -> Reply | None:
    """ApnsConfig / WebpushConfig: headers is a map of strings; the expiry headers are whole seconds."""
    if config is None:
        return None
    if not isinstance(config, dict):
        return _invalid_value(where, "Message", config)
    headers = config.get("headers")
    if headers is None:
        return None
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return _invalid_value(f"{where}.headers", "Map", headers)
    for name in ("apns-expiration", "TTL"):
        if name in headers and not headers[name].isdigit():
            return _invalid(f"{where}.headers", f"Invalid value for header {name}: {headers[name]!r}")
    return None


def _check_strings(value: Any, fields: frozenset[str], where: str) -> Reply | None:
    if not isinstance(value, dict):
        return _invalid_value(where, "Message", value)
    value = _snake_keys(value)
    unknown = set(value) - fields
    if unknown:
        return _unknown_name(sorted(unknown)[0], where)
    for name, item in value.items():
        if not isinstance(item, str):
            return _invalid_value(f"{where}.{name}", "TYPE_STRING", item)
    return None


def fault_reply(status: int | None, reason: str | None) -> Reply:
    """Build the error a fault asks for; a reason Google documents comes with its own HTTP status."""
    code = (reason or STATUS_REASON.get(status or 0, "")).upper()
    if code in FCM_ERRORS:
        http, rpc, text = FCM_ERRORS[code]
        return error_reply(http, rpc, text, _fcm_error(code))
    if code in ERROR_INFO_REASONS:
        http, rpc, text = ERROR_INFO_REASONS[code]
        return error_reply(http, rpc, text, _error_info(code))
    if code in RPC_STATUSES:
        http, text = RPC_STATUSES[code]
        return error_reply(http, code, text)
    http = status or 400
    return error_reply(http, _RPC_STATUS_OF_HTTP.get(http, "UNKNOWN"), reason or f"HTTP {http}")


def error_reply(status: int, rpc_status: str, message: str, *details: dict[str, Any]) -> Reply:
    """Build a google.rpc.Status error response, as every Google API sends one."""
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = list(details)
    return Reply(status, [_JSON], json.dumps({"error": error}).encode())


def _fcm_error(code: str) -> dict[str, Any]:
    return {"@type": FCM_ERROR, "errorCode": code}


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": ERROR_INFO,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "fcm.googleapis.com", "method": "google.firebase.fcm.v1.FcmService.SendMessage"},
    }


def _invalid(field: str, description: str, *, fcm: bool = False) -> Reply:
    violation: dict[str, Any] = {"description": description}
    if field:
        violation = {"field": field, **violation}
    details = [{"@type": BAD_REQUEST, "fieldViolations": [violation]}]
    if fcm:
        details.append(_fcm_error("INVALID_ARGUMENT"))
    return error_reply(400, "INVALID_ARGUMENT", description, *details)


def _invalid_value(field: str, type_name: str, value: Any) -> Reply:
    return _invalid(field, f"Invalid value at '{field}' ({type_name}), {json.dumps(value)}")


def _unknown_name(name: str, where: str) -> Reply:
    at = f" at '{where}'" if where else ""
    return _invalid(where, f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _recipient_missing() -> Reply:
    return _invalid("message", "Recipient of the message is not set.", fcm=True)


def _snake_keys(value: dict[str, Any]) -> dict[str, Any]:
    """Rename lowerCamelCase keys to snake_case: proto3 JSON takes both."""
    return {_CAMEL.sub(r"_\1", k).lower() if isinstance(k, str) else k: v for k, v in value.items()}


def _target_of(body: bytes) -> str:
    """Return the message's token (or topic, or condition): what a fault's target matches."""
    try:
        message = json.loads(body).get("message") or {}
        return str(message.get("token") or message.get("topic") or message.get("condition") or "")
    except (ValueError, AttributeError):
        return ""


class FcmServers:
    """The send API and the token endpoint of one sandbox: started together, stopped together."""

    def __init__(self, api: H2Server, tokens: http1.Http1Server) -> None:
        self.api = api
        self.tokens = tokens

    @property
    def stats(self) -> ServerStats:
        return self.api.stats

    def reset_stats(self) -> None:
        self.api.reset_stats()

    async def close(self) -> None:
        await self.api.close()
        await self.tokens.close()

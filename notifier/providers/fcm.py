"""Firebase Cloud Messaging: the HTTP v1 API with a service account's OAuth2 access token.

Docs:
- https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
- https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages (the message)
- https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode
- https://firebase.google.com/docs/cloud-messaging/error-codes (error responses and their details)
- https://developers.google.com/identity/protocols/oauth2/service-account#httprest (the token)

One request per message (v1 has no batch send), all of a batch at once over
the multiplexed HTTP/2 transport. pyfcm is not used: its send path sleeps on
429, recurses on 5xx and blocks on 503, and its payload builder only assembles
the same dict as ``build_message``.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from notifier.intake.events import Priority
from notifier.providers.base import (
    Delivery, OnOutcome, Outcome, OutcomeKind, printable_ascii, report_outcome, retry_after_s,
)
from notifier.settings import Settings, get_settings
from notifier.store import json_codec
from notifier.providers.expiry import apns_expiration, remaining_ttl_s
from notifier.providers.transport import HttpRequest, HttpResponse, Http2Transport

ERRORS_DOC = "https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# Refresh this long before expiry (google-auth's threshold), or sooner for short-lived tokens.
REFRESH_MARGIN_S = 225.0
# FCM: 4096 bytes of keys and values of data, plus the notification's text.
MAX_PAYLOAD_BYTES = 4096
MAX_TTL_S = 28 * 86400
# Keys FCM refuses in data: https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode (INVALID_ARGUMENT)
RESERVED_DATA_KEYS = frozenset({"from", "message_type"})
RESERVED_DATA_PREFIXES = ("google", "gcm")
# FCM asks for at least a minute's wait after a 429 that names none.
QUOTA_RETRY_AFTER_S = 60.0

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
# INVALID_ARGUMENT about the registration token itself, not about the rest of the message.
INVALID_REGISTRATION = "INVALID_ARGUMENT (registration token)"
# Registration tokens are opaque, but printable ASCII without spaces; anything else is no
# token FCM issued (it would answer INVALID_ARGUMENT about the registration token).
MAX_TOKEN_CHARS = 4096
# Answers that mean our access token was refused: fetch a new one and resend at once, once.
REAUTHENTICATE = frozenset({(401, "UNAUTHENTICATED"), (401, "ACCESS_TOKEN_EXPIRED"), (401, "CREDENTIALS_MISSING")})

K = OutcomeKind
# (HTTP status, code) -> outcome kind; doc: ERRORS_DOC. The code is the first of
# FcmError.errorCode, ErrorInfo.reason and the google.rpc status that has a row.
CLASSIFICATION: dict[tuple[int, str], OutcomeKind] = {
    # google.firebase.fcm.v1.FcmError
    (400, "INVALID_ARGUMENT"): K.FAILED,
    (400, INVALID_REGISTRATION): K.TOKEN_INVALID,
    (401, "THIRD_PARTY_AUTH_ERROR"): K.MISCONFIGURED,  # our APNs certificate / web push key at Firebase
    (403, "SENDER_ID_MISMATCH"): K.TOKEN_INVALID,  # the token belongs to another Firebase project
    (404, "UNREGISTERED"): K.TOKEN_INVALID,
    (429, "QUOTA_EXCEEDED"): K.RETRY,
    (500, "INTERNAL"): K.RETRY,
    (503, "UNAVAILABLE"): K.RETRY,
    # google.rpc.ErrorInfo, from Google's API front end
    (401, "ACCESS_TOKEN_EXPIRED"): K.RETRY,  # new access token, resend at once
    (401, "CREDENTIALS_MISSING"): K.RETRY,  # new access token, resend at once
    (429, "RATE_LIMIT_EXCEEDED"): K.RETRY,  # the project's quota, not the target's
    # google.rpc status alone
    (401, "UNAUTHENTICATED"): K.RETRY,  # new access token, resend at once
    (403, "PERMISSION_DENIED"): K.MISCONFIGURED,  # the service account may not send for this project
    (404, "NOT_FOUND"): K.MISCONFIGURED,  # no such project
    (429, "RESOURCE_EXHAUSTED"): K.RETRY,
}
_RPC_STATUS_OF_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                       429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


class TokenError(Exception):
    """No access token: the outcome every delivery of the batch gets instead."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class _Refused(Exception):
    """The token endpoint answered, and not with a token: raised out of google-auth's refresh."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


class _OneRequest(google.auth.transport.requests.Request):
    """google-auth's transport, stopped at the first refusal.

    google-auth retries a refused token request with backoff, sleeping in the caller; a worker
    must not sleep (waits live in the database), so a refusal leaves refresh() at once and
    becomes the batch's outcome: retry later (429, 5xx, with Retry-After) or misconfigured.
    """

    def __init__(self, session: requests.Session, timeout_s: float, verify: str | bool) -> None:
        super().__init__(session)
        self._timeout_s, self._verify = timeout_s, verify

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # verify per request: a session's own is overridden by REQUESTS_CA_BUNDLE in the environment.
        kwargs |= {"timeout": self._timeout_s, "verify": self._verify}
        response = super().__call__(*args, **kwargs)
        if response.status != 200:
            raise _Refused(response.status, response.headers, response.data)
        return response


class AccessToken:
    """The OAuth2 access token for FCM, shared by the process until near expiry.

    google-auth signs the service account's assertion and asks the key file's token_uri (the
    sandbox's, in development); with no key file configured and none in the var dir it uses
    Application Default Credentials (workload identity on GKE or Cloud Run, the metadata server).
    """

    def __init__(
        self,
        credentials_path: str | Path,
        *,
        ca_file: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        default_credentials_path: str | Path | None = None,
    ) -> None:
        self._credentials_path = Path(credentials_path)
        self._default_path = Path(default_credentials_path) if default_credentials_path else None
        self._timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._verify: str | bool = ca_file or True

    def get(self) -> str:
        """Return a live token, fetching one when there is none or it is about to expire."""
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                self._fetch()
            return self._token  # type: ignore[return-value]

    def refresh(self, refused: str) -> str:
        """Return a new token after `refused` was refused; a token another thread already fetched will do."""
        with self._lock:
            if self._token is None or self._token == refused:
                self._fetch()
            return self._token  # type: ignore[return-value]

    def close(self) -> None:
        self._session.close()

    def _fetch(self) -> None:
        credentials = self._credentials()
        try:
            credentials.refresh(_OneRequest(self._session, self._timeout_s, self._verify))
        except _Refused as refused:
            raise TokenError(_refusal(refused)) from None
        except google.auth.exceptions.TransportError as exc:
            raise TokenError(Outcome.retry(f"fcm oauth: {type(exc).__name__}: {exc}")) from None
        except google.auth.exceptions.RefreshError as exc:  # a 200 without an access token
            raise TokenError(Outcome(K.MISCONFIGURED, reason=f"fcm oauth 200 {exc.args[0]}")) from None
        expiry = credentials.expiry.replace(tzinfo=timezone.utc) if credentials.expiry else None
        lifetime = (expiry - datetime.now(timezone.utc)).total_seconds() if expiry else 3600.0
        self._token = credentials.token
        self._refresh_at = self._clock() + lifetime - min(REFRESH_MARGIN_S, lifetime / 10)

    def _credentials(self) -> google.auth.credentials.Credentials:
        if self._credentials_path == self._default_path and not self._credentials_path.exists():
            try:
                credentials, _project = google.auth.default(scopes=[SCOPE])
            except google.auth.exceptions.DefaultCredentialsError as exc:
                reason = f"fcm credentials: no key file ({self._credentials_path}) and no default credentials: {exc}"
                raise TokenError(Outcome(K.MISCONFIGURED, reason=reason)) from None
            return credentials
        # Read at every fetch (hourly): a rotated key file is picked up without a restart.
        try:
            account = json.loads(self._credentials_path.read_text())
            if not all(isinstance(account.get(k), str) for k in ("client_email", "private_key", "token_uri")):
                raise ValueError("client_email, private_key or token_uri missing")
            return service_account.Credentials.from_service_account_info(account, scopes=[SCOPE])
        except (OSError, ValueError) as exc:
            reason = f"fcm credentials {self._credentials_path}: {exc}"
            raise TokenError(Outcome(K.MISCONFIGURED, reason=reason)) from None


def _refusal(refused: _Refused) -> Outcome:
    """What a refused token request means for the batch."""
    try:
        body = json.loads(refused.body or b"{}")
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    text = f"fcm oauth {refused.status} {error or 'no access_token'}"
    if isinstance(body, dict) and body.get("error_description"):
        text += f": {body['error_description']}"
    if refused.status >= 500 or refused.status == 429:
        return Outcome.retry(text, retry_after_s(refused.headers.get("retry-after")))
    return Outcome(K.MISCONFIGURED, reason=text)


def data_strings(data: dict[str, Any]) -> dict[str, str]:
    """Make data a map of strings, as FCM requires: JSON-encode other values, drop the keys FCM reserves."""
    out: dict[str, str] = {}
    for key, value in data.items():
        key = str(key)
        lowered = key.lower()
        if lowered in RESERVED_DATA_KEYS or lowered.startswith(RESERVED_DATA_PREFIXES):
            continue
        out[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return out


def build_message(d: Delivery, now: datetime | None = None) -> dict[str, Any]:
    """Build the v1 message for one delivery, shortening the body to FCM's 4096-byte payload."""
    data = data_strings(d.data)
    try:
        high = Priority.of(d.priority).lane == "high"
    except ValueError:
        high = False
    android: dict[str, Any] = {"priority": "HIGH" if high else "NORMAL"}
    ttl = remaining_ttl_s(d, now, MAX_TTL_S)
    if ttl is not None:
        android["ttl"] = f"{ttl}s"
    if d.collapse_id:
        android["collapse_key"] = d.collapse_id
    message: dict[str, Any] = {"token": d.target, "android": android}
    if ttl is not None:
        # The same expiry for the platforms FCM relays to: APNs (iOS apps on FCM) and Web Push.
        message["apns"] = {"headers": {"apns-expiration": apns_expiration(d)}}
        message["webpush"] = {"headers": {"TTL": str(ttl)}}
    if data:
        message["data"] = data
    if not d.data.get("background"):  # a background push is data only: the app handles it silently
        message["notification"] = {"title": d.title, "body": _fit_body(d.title, d.body, data)}
    return message


def _fit_body(title: str, body: str, data: dict[str, str]) -> str:
    room = MAX_PAYLOAD_BYTES - sum(len(k.encode()) + len(v.encode()) for k, v in data.items()) - len(title.encode())
    raw = body.encode()
    if len(raw) <= room:
        return body
    # Cut whole characters and end with an ellipsis (3 bytes).
    return (raw[: room - 3].decode(errors="ignore") + "…") if room >= 3 else ""


def classify(resp: HttpResponse) -> Outcome:
    """Turn one FCM response into an outcome (CLASSIFICATION, ERRORS_DOC)."""
    return _classify(resp)[0]


def _classify(resp: HttpResponse) -> tuple[Outcome, tuple[int, str] | None]:
    """Return the outcome, and the table row that gave it."""
    if resp.status == 200:
        try:
            return Outcome.ok(json.loads(resp.body)["name"]), None
        except (ValueError, KeyError, TypeError):
            return Outcome.ok(None), None
    if resp.status == 0:
        if resp.unsendable:  # never sent; the same request again cannot do better
            return Outcome.failed(f"fcm: {resp.error}"), None
        return Outcome.retry(f"transport: {resp.error}"), None
    try:
        error = json.loads(resp.body or b"{}").get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        error = {}
    row = None
    for code in _codes(resp.status, error):
        if (resp.status, code) in CLASSIFICATION:
            row = (resp.status, code)
            break
    if row is not None:
        kind = CLASSIFICATION[row]
        code = row[1]
    else:
        kind = K.RETRY if resp.status >= 500 or resp.status == 429 else K.FAILED
        code = next(iter(_codes(resp.status, error)), "")
    text = f"fcm {resp.status} {code}".rstrip()
    if error.get("message"):
        text += f": {error['message']}"
    retry_after = retry_after_s(resp.headers.get("retry-after"))
    if retry_after is None and resp.status == 429:
        retry_after = QUOTA_RETRY_AFTER_S
    return Outcome(kind, reason=text, retry_after_s=retry_after if kind is K.RETRY else None), row


def _codes(status: int, error: dict[str, Any]) -> list[str]:
    """List the codes an error carries, most specific first: FcmError, ErrorInfo, then the google.rpc status."""
    codes: list[str] = []
    details = error.get("details") if isinstance(error.get("details"), list) else []
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR and detail.get("errorCode"):
            codes.append(str(detail["errorCode"]))
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == ERROR_INFO and detail.get("reason"):
            codes.append(str(detail["reason"]))
    rpc_status = error.get("status") or _RPC_STATUS_OF_HTTP.get(status)
    if rpc_status:
        codes.append(str(rpc_status))
    if "INVALID_ARGUMENT" in codes and _about_registration_token(error, details):
        codes.insert(0, INVALID_REGISTRATION)
    return codes


def _about_registration_token(error: dict[str, Any], details: list[Any]) -> bool:
    """Tell whether an INVALID_ARGUMENT is about the token: its message says so, or a BadRequest names message.token."""
    message = str(error.get("message", "")).lower()
    if "registration token" in message and ("not a valid" in message or "invalid" in message):
        return True
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == BAD_REQUEST:
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, dict) and violation.get("field") == "message.token":
                    return True
    return False


def _classify_safely(resp: HttpResponse) -> tuple[Outcome, tuple[int, str] | None]:
    try:
        return _classify(resp)
    except Exception as exc:  # noqa: BLE001 - one unreadable answer never fails the batch
        return Outcome.failed(f"fcm {resp.status}: the answer could not be read ({type(exc).__name__})"), None


def _body(d: Delivery) -> bytes | Outcome:
    """The request body of one delivery, or the outcome that says why it cannot be sent."""
    target = d.target
    if not (printable_ascii(target) and " " not in target and 0 < len(target) <= MAX_TOKEN_CHARS):
        # What FCM answers for such a token, without sending it.
        return Outcome(CLASSIFICATION[(400, INVALID_REGISTRATION)],
                       reason="fcm INVALID_ARGUMENT: not sent, the registration token is not printable ASCII "
                              "without spaces")
    try:
        return json_codec.dumps_compact({"message": build_message(d)})
    except Exception as exc:  # noqa: BLE001 - one delivery's bad value never fails the batch
        return Outcome.failed(f"fcm: not sent, the message could not be built ({type(exc).__name__})")


class FcmProvider:
    """Send pushes to FCM over one multiplexed HTTP/2 connection per process."""

    name = "fcm"

    def __init__(self, settings: Settings | None = None, transport: Http2Transport | None = None) -> None:
        s = settings or get_settings()
        self._url = f"{s.fcm_url.rstrip('/')}/v1/projects/{s.fcm_project_id}/messages:send"
        ca_file = s.apns_ca_file or None  # one CA setting for APNs and FCM
        self._token = AccessToken(s.fcm_credentials_path, ca_file=ca_file, timeout_s=s.send_timeout_s,
                                  default_credentials_path=s.var_dir / "sandbox" / "fcm-service-account.json")
        self._transport = transport or Http2Transport(ca_file=ca_file, timeout_s=s.send_timeout_s)

    def _request(self, index: int, body: bytes, bearer: str) -> HttpRequest:
        headers = {"authorization": f"Bearer {bearer}", "content-type": "application/json; charset=UTF-8"}
        return HttpRequest("POST", self._url, headers, body, tag=index)

    def send_batch(self, deliveries: Sequence[Delivery], on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Send every delivery at once; on a refused access token, fetch a new one and resend those once.

        on_outcome: see Provider.send_batch; a delivery whose access token was refused is
        reported after its resend, which starts once the first round has all its answers.
        """
        outcomes: list[Outcome | None] = [None] * len(deliveries)

        def settle(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome
            report_outcome(on_outcome, index, outcome)

        if not deliveries:
            return []
        try:
            bearer = self._token.get()
        except Exception as exc:  # noqa: BLE001 - TokenError, or a key that does not sign: the batch's outcome
            outcome = exc.outcome if isinstance(exc, TokenError) else Outcome(
                K.MISCONFIGURED, reason=f"fcm oauth: the assertion cannot be signed ({type(exc).__name__})")
            for i in range(len(deliveries)):
                settle(i, outcome)
            return outcomes  # type: ignore[return-value]
        bodies: dict[int, bytes] = {}
        for i, d in enumerate(deliveries):
            built = _body(d)
            if isinstance(built, Outcome):
                settle(i, built)
            else:
                bodies[i] = built
        refused: list[int] = []

        def first_answer(resp: HttpResponse) -> None:
            outcome, row = _classify_safely(resp)
            if row in REAUTHENTICATE:
                outcomes[resp.request.tag] = outcome  # not final: resent below with a new access token
                refused.append(resp.request.tag)
            else:
                settle(resp.request.tag, outcome)

        self._transport.send_each([self._request(i, body, bearer) for i, body in bodies.items()], first_answer)
        if refused:
            refused.sort()
            try:
                bearer = self._token.refresh(bearer)
            except Exception as exc:  # noqa: BLE001
                outcome = exc.outcome if isinstance(exc, TokenError) else Outcome(
                    K.MISCONFIGURED, reason=f"fcm oauth: the assertion cannot be signed ({type(exc).__name__})")
                for i in refused:
                    settle(i, outcome)
                return outcomes  # type: ignore[return-value]

            def second_answer(resp: HttpResponse) -> None:
                outcome, row = _classify_safely(resp)
                if row in REAUTHENTICATE:
                    # A fresh token refused too: our credentials, not the token's age.
                    outcome = Outcome(K.MISCONFIGURED, reason=f"{outcome.reason} (with a new access token)")
                settle(resp.request.tag, outcome)

            self._transport.send_each([self._request(i, bodies[i], bearer) for i in refused], second_answer)
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        self._transport.close()
        self._token.close()

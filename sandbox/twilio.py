"""Answer Twilio Messages API requests the way Twilio does.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP basic auth with the
account SID and auth token, form-encoded ``To``, ``From`` or ``MessagingServiceSid``,
``Body``, ``StatusCallback``. 201 with the Message resource when accepted, else
Twilio's error JSON ``{"code", "message", "more_info", "status"}``:
https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource
https://www.twilio.com/docs/api/errors
The magic test numbers behave as with Twilio's test credentials (To +15005550001 is
invalid, +15005550004 has replied STOP, ...):
https://www.twilio.com/docs/iam/test-credentials
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from sandbox.http1 import Reply, Request
from sandbox.state import Fault, SandboxState

PROVIDER = "twilio"
API_VERSION = "2010-04-01"
_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages\.json").fullmatch
_E164 = re.compile(r"\+[1-9][0-9]{1,14}").fullmatch
MAX_BODY_CHARS = 1600

# Error code -> (HTTP status, message). https://www.twilio.com/docs/api/errors/<code>
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service unavailable"),
    21211: (400, "Invalid 'To' Phone Number"),
    21212: (400, "Invalid 'From' Phone Number"),
    21408: (400, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number"),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21606: (400, "The 'From' phone number provided is not a valid message-capable Twilio phone number "
                 "for this destination."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21611: (400, "This 'From' number has exceeded the maximum number of queued messages"),
    21612: (400, "The 'To' phone number is not currently reachable via SMS"),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
}
# A fault that sets only a status answers with this code.
STATUS_CODE = {400: 21211, 401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}
MAGIC_TO = {"+15005550001": 21211, "+15005550002": 21612, "+15005550003": 21408,
            "+15005550004": 21610, "+15005550009": 21614}
MAGIC_FROM = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}


def error(code: int, status: int | None = None, message: str | None = None) -> Reply:
    """Twilio's error reply."""
    default_status, default_message = ERRORS.get(code, (status or 400, "Error"))
    status = status or default_status
    body = {"code": code, "message": message or default_message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return Reply(status, [("Content-Type", "application/json")], json.dumps(body).encode())


def message_sid() -> str:
    return "SM" + secrets.token_hex(16)


class TwilioSandbox:
    """The Messages resource of one account: check credentials and input like Twilio, record what it accepts."""

    provider = PROVIDER

    def __init__(self, state: SandboxState, *, account_sid: str, auth_token: str, from_number: str,
                 messaging_service_sid: str = "", app_senders: tuple[str, ...] = ()) -> None:
        self.state = state
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        # The account's other numbers and services: the senders of the notifier's apps (docs/apps.md).
        self.app_senders = frozenset(app_senders)

    def handle(self, request: Request) -> Reply:
        """Answer one request."""
        self.state.count_request(PROVIDER)
        match = _MESSAGES_PATH(request.path)
        if match is None:
            return error(20404)
        if not self._authenticated(request.headers.get("authorization", "")):
            return error(20003)
        if match.group(1) != self.account_sid:
            return error(20404)
        if request.method != "POST":
            return error(20404, 405, "Method not allowed")
        try:
            form = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            form = {}
        target = form.get("To", "")
        fault = self.state.fault_for(PROVIDER, target)
        if fault is not None:
            return self._faulted(request, form, target, fault)
        return self._process(request, form, target)

    def _authenticated(self, authorization: str) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(self.auth_token) and secrets.compare_digest(
            f"{user}:{password}".encode(), f"{self.account_sid}:{self.auth_token}".encode()
        )

    def _faulted(self, request: Request, form: dict[str, str], target: str, fault: Fault) -> Reply:
        if fault.drop or fault.refuse:
            return Reply(drop=True, delay_s=fault.delay_s)
        if fault.answers_error(201):
            # The fault's reason carries the error code ("21610"), or a message for its status.
            code = int(fault.reason) if fault.reason and fault.reason.isdigit() else None
            if code is None:
                code = STATUS_CODE.get(fault.status or 400, 20500 if (fault.status or 400) >= 500 else 21211)
            message = fault.reason if fault.reason and not fault.reason.isdigit() else None
            reply = error(code, fault.status, message)
            reply.headers += fault.retry_after_header()
        else:
            reply = self._process(request, form, target)
        reply.delay_s = fault.delay_s
        return reply

    def _process(self, request: Request, form: dict[str, str], to: str) -> Reply:
        sender, service = form.get("From", ""), form.get("MessagingServiceSid", "")
        body = form.get("Body", "")
        if not to:
            return error(21604)
        if not _E164(to) or to in MAGIC_TO:
            code = MAGIC_TO.get(to, 21211)
            return error(code, message=f"{ERRORS[code][1]}: {to}" if code == 21211 else None)
        if not sender and not service:
            return error(21603)
        if service and service != self.messaging_service_sid and service not in self.app_senders:
            return error(20404, message=f"The requested resource /Services/{service} was not found")
        if sender and not service:
            if sender in MAGIC_FROM:
                return error(MAGIC_FROM[sender])
            if sender != self.from_number and sender not in self.app_senders:
                return error(21606 if _E164(sender) else 21212)
        if not body and not form.get("MediaUrl"):
            return error(21602)
        if len(body) > MAX_BODY_CHARS:
            return error(21617)
        sid = message_sid()
        now = email.utils.formatdate(time.time(), usegmt=True).replace("GMT", "+0000")
        resource: dict[str, Any] = {
            "sid": sid, "account_sid": self.account_sid, "api_version": API_VERSION,
            "to": to, "from": sender or None, "messaging_service_sid": service or None, "body": body,
            "status": "accepted" if service else "queued", "direction": "outbound-api",
            "num_segments": "0" if service else str(_segments(body)), "num_media": "0",
            "date_created": now, "date_updated": now, "date_sent": None,
            "error_code": None, "error_message": None, "price": None, "price_unit": "USD",
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        self.state.record(PROVIDER, to, sid, headers, form)
        return Reply(201, [("Content-Type", "application/json")], json.dumps(resource).encode())


def _segments(body: str) -> int:
    """GSM-7 fits 160 characters (153 per part when split); anything else is UCS-2, 70 (67)."""
    gsm = all(ord(c) < 128 for c in body)
    single, part = (160, 153) if gsm else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // part)

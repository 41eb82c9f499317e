"""Answer SendGrid v3 Mail Send requests the way SendGrid does.

``POST /v3/mail/send`` with ``Authorization: Bearer <API key>``; 202 with an
``X-Message-Id`` header when accepted, else the status and error JSON SendGrid
documents (``{"errors": [{"message", "field", "help"}]}``):
https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send
https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors
https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits

Where SendGrid documents no exact wording the sandbox's own message says what is wrong.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from sandbox.http1 import Reply, Request
from sandbox.state import Fault, SandboxState

PROVIDER = "sendgrid"
MAIL_SEND_PATH = "/v3/mail/send"
ERRORS_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
# The whole request, attachments included, may not exceed 30 MB.
MAX_BODY = 30 * 1000 * 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_PERSONALIZATIONS = 1000

# A fault that sets only a status answers with SendGrid's message for it.
STATUS_MESSAGE = {
    400: "Bad Request",
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    404: "not found",
    405: "method not allowed",
    413: "The JSON payload you have included in your request is too large.",
    429: "too many requests",
    500: "internal error",
    502: "bad gateway",
    503: "service unavailable",
}
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+").fullmatch
# Never recorded: the API key is a credential.
_SECRET_HEADERS = frozenset({"authorization"})


def errors(status: int, message: str, field: str | None = None, help_anchor: str | None = None) -> Reply:
    """SendGrid's error reply: {"errors": [{"message", "field", "help"}]}."""
    body = {"errors": [{"message": message, "field": field,
                        "help": f"{ERRORS_HELP}#{help_anchor}" if help_anchor else None}]}
    return Reply(status, [("Content-Type", "application/json")], json.dumps(body).encode())


def too_large() -> Reply:
    return errors(413, STATUS_MESSAGE[413])


def message_id() -> str:
    """An X-Message-Id like SendGrid's: 22 URL-safe base64 characters."""
    return secrets.token_urlsafe(16)[:22]


class SendgridSandbox:
    """The v3 Mail Send endpoint: check the key and the request like SendGrid, record what it accepts."""

    provider = PROVIDER

    def __init__(self, state: SandboxState, *, api_key: str, clock=time.time) -> None:
        self.state = state
        self.api_key = api_key
        self.clock = clock

    def handle(self, request: Request) -> Reply:
        """Answer one request."""
        self.state.count_request(PROVIDER)
        if request.path.rstrip("/") != MAIL_SEND_PATH:
            return errors(404, STATUS_MESSAGE[404])
        if request.method != "POST":
            return errors(405, STATUS_MESSAGE[405])
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if not auth:
            return errors(401, "authorization required")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            return errors(401, STATUS_MESSAGE[401])
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return errors(400, "Bad Request", None, "-Request-Body-Parameters")
        target = _first_recipient(body)
        fault = self.state.fault_for(PROVIDER, target)
        if fault is not None:
            return self._faulted(request, body, target, fault)
        return self._process(request, body, target)

    def _faulted(self, request: Request, body: dict, target: str, fault: Fault) -> Reply:
        if fault.drop or fault.refuse:
            return Reply(drop=True, delay_s=fault.delay_s)
        if fault.answers_error(202):
            status = fault.status or 400
            reply = errors(status, fault.reason or STATUS_MESSAGE.get(status, "error"))
            if status == 429:
                # https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits
                reset = int(self.clock()) + (fault.retry_after if fault.retry_after is not None else 1)
                reply.headers += [("X-RateLimit-Limit", "600"), ("X-RateLimit-Remaining", "0"),
                                  ("X-RateLimit-Reset", str(reset))]
            else:
                reply.headers += fault.retry_after_header()
        else:
            reply = self._process(request, body, target)
        reply.delay_s = fault.delay_s
        return reply

    def _process(self, request: Request, body: dict, target: str) -> Reply:
        problem = validate(body)
        if problem is not None:
            return errors(400, *problem)
        mid = message_id()
        headers = {k: v for k, v in request.headers.items() if k not in _SECRET_HEADERS}
        self.state.record(PROVIDER, target, mid, headers, body)
        return Reply(202, [("X-Message-Id", mid)])


def _first_recipient(body: dict) -> str:
    try:
        return str(body["personalizations"][0]["to"][0]["email"])
    except (KeyError, IndexError, TypeError):
        return ""


def validate(body: dict[str, Any]) -> tuple[str, str | None, str | None] | None:
    """Return (message, field, help anchor) of the first problem SendGrid reports, or None."""
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return ("The personalizations field is required and must have at least one personalization.",
                "personalizations", "-Personalizations-Errors")
    if len(personalizations) > MAX_PERSONALIZATIONS:
        return (f"The personalization block is limited to 1000 personalizations per API request. You have provided "
                f"{len(personalizations)} personalizations. Please consider splitting this into multiple requests "
                "and resending your request.", "personalizations", "-Personalizations-Errors")
    for i, p in enumerate(personalizations):
        to = p.get("to") if isinstance(p, dict) else None
        if not isinstance(to, list) or not to:
            return ("The to array is required for all personalization objects, and must have at least one email "
                    "object with a valid email address.", f"personalizations.{i}.to", "message.personalizations.to")
        for j, recipient in enumerate(to):
            if not isinstance(recipient, dict) or not _EMAIL(str(recipient.get("email", ""))):
                return ("Does not contain a valid address.", f"personalizations.{i}.to.{j}.email",
                        "-Email-Address")
    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return ("The from object must be provided for every email send. It is an object that requires the email "
                'parameter, but may also contain a name parameter.  e.g. {"email" : "example@example.com"}  or '
                '{"email" : "example@example.com", "name" : "Example Recipient"}.', "from.email", "message.from")
    if not _EMAIL(str(sender["email"])):
        return "The from email does not contain a valid address.", "from.email", "message.from"
    template = body.get("template_id")
    if not template and not body.get("subject") and not all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    ):
        return ("The subject is required. You can get around this requirement if you use a template with a subject "
                "defined or if every personalization has a subject defined.", "subject", "message.subject")
    content = body.get("content")
    if not template and (not isinstance(content, list) or not content):
        return ("Unless a valid template_id is provided, the content parameter is required. There must be at least "
                "one defined content block. We typically suggest both text/plain and text/html blocks are included, "
                "but only one block is required.", "content", "message.content")
    for i, block in enumerate(content or []):
        if not isinstance(block, dict) or not isinstance(block.get("value"), str) or not block["value"]:
            return ("The content value must be a string at least one character in length.",
                    f"content.{i}.value", "message.content.value")
    for where, args in [("custom_args", body.get("custom_args"))] + [
        (f"personalizations.{i}.custom_args", p.get("custom_args")) for i, p in enumerate(personalizations)
    ]:
        if args is None:
            continue
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            return "The custom_args parameter must be an object whose values are strings.", where, "message.custom_args"
        if len(json.dumps(args).encode()) > MAX_CUSTOM_ARGS_BYTES:
            return "The custom_args field must be less than 10,000 bytes.", where, "message.custom_args"
    return None

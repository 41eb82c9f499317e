"""An SMTP submission server (aiosmtpd) that checks STARTTLS and AUTH like a real relay.

Commands before STARTTLS are refused (530), AUTH LOGIN/PLAIN checks the configured
username and password (535 on a mismatch), MAIL before AUTH is refused (530). Each
accepted message is recorded once per recipient, with its Message-ID as the id.
Reply codes are RFC 5321 (https://www.rfc-editor.org/rfc/rfc5321#section-4.2) and
RFC 4954 for AUTH (https://www.rfc-editor.org/rfc/rfc4954#section-6).

Faults answer with their status as the reply code and their reason as the text:
an AUTH code (530, 534, 535, 538) answers the AUTH command, matched on the login;
any other code answers RCPT TO, matched on the recipient address. ``drop`` closes
the connection at RCPT TO.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import secrets
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from sandbox.h2server import ServerStats
from sandbox.state import Fault, SandboxState

log = logging.getLogger(__name__)


class _QuietDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # aiosmtpd warns about its own use of Session.login_data on every AUTH.
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietDeprecation())

PROVIDER = "smtp"
HOSTNAME = "sandbox.smtp.invalid"
AUTH_CODES = frozenset({530, 534, 535, 538})
# A fault that sets only a code answers with the enhanced status and text a relay gives for it.
CODE_TEXT = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.1 Mailbox unavailable, try again later",
    451: "4.3.0 Local error in processing",
    452: "4.5.3 Too many recipients",
    530: "5.7.0 Authentication required",
    534: "5.7.9 Authentication mechanism is too weak",
    535: "5.7.8 Authentication credentials invalid",
    538: "5.7.11 Encryption required for requested authentication mechanism",
    550: "5.1.1 Mailbox unavailable",
    551: "5.1.6 User not local",
    552: "5.2.2 Mailbox full",
    553: "5.1.3 Mailbox name not allowed",
    554: "5.7.1 Transaction failed",
}


def reply(code: int, text: str | None) -> str:
    return f"{code} {text or CODE_TEXT.get(code, 'Error')}"


class SmtpSandbox:
    """The aiosmtpd handler and authenticator: faults, credentials, records."""

    provider = PROVIDER

    def __init__(self, state: SandboxState, *, username: str, password: str) -> None:
        self.state = state
        self.username = username
        self.password = password

    # aiosmtpd authenticator (LOGIN and PLAIN)
    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        fault = self._take_auth_fault(login)
        if fault is not None:
            return AuthResult(success=False, handled=False, message=reply(fault.status or 535, fault.reason))
        ok = secrets.compare_digest(auth_data.login, self.username.encode()) and secrets.compare_digest(
            auth_data.password, self.password.encode()
        )
        return AuthResult(success=ok, handled=False)

    def _take_auth_fault(self, login: str) -> Fault | None:
        """Like SandboxState.take_fault, for the faults that answer AUTH."""
        return self.state.take_first(PROVIDER, lambda fault: fault.status in AUTH_CODES and fault.matches(login))

    # aiosmtpd handler hooks

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        self.state.count_request(PROVIDER)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        fault = self.state.take_fault(PROVIDER, address) if self.state.faults.get(PROVIDER) else None
        if fault is not None and fault.status not in AUTH_CODES:
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.drop or fault.refuse:
                server.transport.abort()
                return "421 4.3.2 connection dropped"
            if fault.status or fault.reason:
                return reply(fault.status or 550, fault.reason)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        message_id = str(message.get("Message-ID", "")).strip() or f"<{secrets.token_hex(12)}@{HOSTNAME}>"
        body = message.get_body(preferencelist=("plain", "html"))
        payload = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "from": str(message.get("From", "")),
            "to": str(message.get("To", "")),
            "subject": str(message.get("Subject", "")),
            "message_id": message_id,
            "headers": {k: str(v) for k, v in message.items()},
            "body": body.get_content() if body is not None else "",
        }
        for rcpt in envelope.rcpt_tos:
            self.state.record(PROVIDER, rcpt, message_id, {"auth_login": self.username}, payload)
        return f"250 2.0.0 OK queued as {message_id}"


class SmtpServer:
    """Listen for SMTP on the sandbox's loop; STARTTLS with the sandbox's TLS identity."""

    def __init__(self, sandbox: SmtpSandbox, tls_context: ssl.SSLContext) -> None:
        self.sandbox = sandbox
        self.tls_context = tls_context
        self.stats = ServerStats()
        self._protocols: set[SMTP] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, reuse_address=True)
        return self._server.sockets[0].getsockname()[1]

    def _protocol(self) -> SMTP:
        protocol = _Connection(
            self,
            self.sandbox,
            hostname=HOSTNAME,
            ident="notifier sandbox ESMTP",
            tls_context=self.tls_context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=self.sandbox.authenticate,
            loop=asyncio.get_running_loop(),
        )
        self.stats.accepted += 1
        self.stats.open += 1
        self._protocols.add(protocol)
        return protocol

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def reset_stats(self) -> None:
        self.stats.accepted = 0


class _Connection(SMTP):
    """One client connection; tells its server when it ends."""

    def __init__(self, owner: SmtpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def connection_lost(self, error: Exception | None) -> None:
        if self in self.owner._protocols:
            self.owner._protocols.discard(self)
            self.owner.stats.open -= 1
        super().connection_lost(error)

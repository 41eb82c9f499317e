"""SMTP submission (the second email provider): STARTTLS, AUTH, one connection reused across batches.

Docs:
- RFC 5321 reply codes: https://www.rfc-editor.org/rfc/rfc5321#section-4.2.3
- RFC 3463 enhanced status codes: https://www.rfc-editor.org/rfc/rfc3463
- RFC 4954 AUTH replies (530, 534, 535, 538): https://www.rfc-editor.org/rfc/rfc4954#section-6
- RFC 3207 STARTTLS: https://www.rfc-editor.org/rfc/rfc3207

The server's certificate is always verified: against the configured CA file (the
sandbox's, in development) or the system's CAs. The Message-ID is derived from the
delivery's idempotency key, so a resend after a lost reply is recognisable as the
same message.
"""
from __future__ import annotations

import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Sequence

from notifier.providers.base import Delivery, OnOutcome, Outcome, OutcomeKind, report_outcome
from notifier.settings import Settings, get_settings

RESPONSES_DOC = "https://www.rfc-editor.org/rfc/rfc5321#section-4.2.3"
MESSAGE_ID_NAMESPACE = uuid.UUID("6e6f7469-6669-6572-2d73-6d74702d6964")

K = OutcomeKind
# SMTP reply code -> outcome kind. One row per code a relay documents; doc: RESPONSES_DOC.
CLASSIFICATION: dict[int, OutcomeKind] = {
    421: K.RETRY,          # service not available, closing the channel
    450: K.RETRY,          # mailbox unavailable (busy, greylisted)
    451: K.RETRY,          # local error in processing
    452: K.RETRY,          # insufficient system storage
    454: K.RETRY,          # TLS or temporary authentication failure
    500: K.FAILED,         # syntax error: this message will not go through as it is
    501: K.FAILED,
    502: K.MISCONFIGURED,  # command not implemented (e.g. AUTH on a relay that has none)
    503: K.FAILED,
    504: K.MISCONFIGURED,  # parameter not implemented
    530: K.MISCONFIGURED,  # authentication (or STARTTLS) required
    534: K.MISCONFIGURED,  # authentication mechanism too weak
    535: K.MISCONFIGURED,  # authentication credentials invalid
    538: K.MISCONFIGURED,  # encryption required for the mechanism
    550: K.FAILED,         # mailbox unavailable (no such user, rejected by policy)
    551: K.FAILED,         # user not local
    552: K.FAILED,         # exceeded storage allocation / message too big
    553: K.FAILED,         # mailbox name not allowed
    554: K.FAILED,         # transaction failed
    555: K.FAILED,         # MAIL/RCPT parameters not recognised
}


def classify_code(code: int, text: bytes | str) -> Outcome:
    """Turn one SMTP reply into an outcome (CLASSIFICATION, RESPONSES_DOC)."""
    kind = CLASSIFICATION.get(code) or (K.RETRY if 400 <= code < 500 else K.FAILED)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return Outcome(kind, reason=f"smtp {code} {text}"[:500])


def message_id(d: Delivery, domain: str) -> str:
    """The Message-ID of a delivery, the same on every attempt."""
    return f"<{uuid.uuid5(MESSAGE_ID_NAMESPACE, d.idempotency_key)}@{domain}>"


# The delivery's fields that become header lines (To, Subject, X-Notifier-Notification-Id);
# the address is also the RCPT TO argument.
_HEADER_FIELDS = ("target", "title", "notification_id")


def refused_header(d: Delivery) -> str | None:
    """Name the delivery's field that cannot be a header line (CR or LF would start another), or None."""
    for field in _HEADER_FIELDS:
        value = getattr(d, field)
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            return field
    return None


def build_message(d: Delivery, s: Settings) -> EmailMessage:
    """Build the message of one delivery; ValueError when a header value holds CR or LF."""
    msg = EmailMessage()
    msg["From"] = formataddr((s.email_from_name, s.email_from)) if s.email_from_name else s.email_from
    msg["To"] = d.target
    msg["Subject"] = d.title or d.body[:78]
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(d, s.email_from.rpartition("@")[2] or "localhost")
    msg["X-Notifier-Delivery-Id"] = str(d.id)
    msg["X-Notifier-Notification-Id"] = d.notification_id
    msg.set_content(d.body or d.title)
    if d.html:
        msg.add_alternative(d.html, subtype="html")  # multipart/alternative: text first, HTML preferred
    return msg


class _Misconfigured(Exception):
    pass


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH with one mechanism: smtplib's login() tries each one offered, so a wrong password counts twice."""
    if not smtp.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
    offered = smtp.esmtp_features["auth"].upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise smtplib.SMTPNotSupportedError(f"no supported AUTH mechanism (server offers {' '.join(offered)})")
    smtp.user, smtp.password = username, password
    smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))


class SmtpProvider:
    """Send email over one authenticated SMTP connection per process, reconnecting when it drops."""

    name = "smtp"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._tls: ssl.SSLContext | None = None
        self._smtp: smtplib.SMTP | None = None

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            s = self.settings
            ca_file = s.smtp_ca_file or s.apns_ca_file
            try:
                # Verification is never turned off: the sandbox's CA in development, the system's in production.
                self._tls = ssl.create_default_context(cafile=ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise _Misconfigured(f"smtp CA file {ca_file!r} does not load: {exc}") from exc
        return self._tls

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.send_timeout_s)
        try:
            smtp.ehlo()
            if s.smtp_starttls:
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if s.smtp_username:
                _login(smtp, s.smtp_username, s.smtp_password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send_batch(self, deliveries: Sequence[Delivery], on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Send each delivery in turn on the one connection; a connection-level failure ends the batch.

        on_outcome: see Provider.send_batch; called after each message.
        """
        outcomes: list[Outcome] = []
        for i, d in enumerate(deliveries):
            outcome, fatal = self._send(d)
            outcomes.append(outcome)
            report_outcome(on_outcome, i, outcome)
            if fatal:  # nothing else will get through now: the rest share this outcome
                for j in range(i + 1, len(deliveries)):
                    outcomes.append(shared := Outcome(outcome.kind, reason=outcome.reason))
                    report_outcome(on_outcome, j, shared)
                break
        return outcomes

    def _send(self, d: Delivery) -> tuple[Outcome, bool]:
        """Send one delivery; return its outcome and whether no connection can be had for the rest."""
        field = refused_header(d)
        if field is not None:
            return Outcome.failed(f"smtp: not sent, {field} holds CR or LF (it would become a header line)"), False
        try:
            msg = build_message(d, self.settings)
        except Exception as exc:  # noqa: BLE001 - its text may quote the address: the type only
            return Outcome.failed(f"smtp: not sent, the message could not be built ({type(exc).__name__})"), False
        for attempt in (1, 2):
            reused = self._smtp is not None
            if self._smtp is None:
                try:
                    self._smtp = self._connect()
                except Exception as exc:  # noqa: BLE001 - classified below, never raised to the task
                    outcome = self._classify_error(exc)
                    if outcome.kind is K.FAILED:  # a refused greeting or EHLO says nothing about this message
                        outcome = Outcome(K.MISCONFIGURED, reason=outcome.reason)
                    return outcome, True
            try:
                self._smtp.send_message(msg, from_addr=self.settings.email_from, to_addrs=[d.target])
                return Outcome.ok(msg["Message-ID"]), False
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = exc.recipients.get(d.target) or next(iter(exc.recipients.values()))
                outcome = classify_code(code, text)
            except smtplib.SMTPServerDisconnected as exc:
                self._reset()
                if reused and attempt == 1:
                    continue  # an idle kept-alive connection the server closed: open a new one, once
                return Outcome.retry(f"smtp disconnected: {exc}"), False
            except smtplib.SMTPNotSupportedError:
                # Raised before MAIL FROM for an address that needs SMTPUTF8 the server does not
                # offer: about this message, not the connection, and no resend helps.
                return Outcome.failed("smtp: not sent, the address needs SMTPUTF8, which the server lacks"), False
            except (UnicodeError, ValueError, TypeError) as exc:
                # Raised while the message is flattened, before anything is sent; a new
                # connection all the same, in case it came mid-transaction.
                self._reset()
                return Outcome.failed(f"smtp: not sent, the message could not be encoded ({type(exc).__name__})"), False
            except Exception as exc:  # noqa: BLE001
                outcome = self._classify_error(exc)
            if self._smtp is not None and self._smtp.sock is None:
                self._reset()  # smtplib closed it (after a 421): the next delivery reconnects
            return outcome, False
        raise AssertionError("unreachable")

    def _classify_error(self, exc: Exception) -> Outcome:
        if isinstance(exc, _Misconfigured):
            return Outcome(K.MISCONFIGURED, reason=str(exc))
        if isinstance(exc, smtplib.SMTPResponseException):
            # Refused sender, DATA, AUTH (535) or greeting; and 421/454 while connecting.
            return classify_code(exc.smtp_code, exc.smtp_error)
        self._reset()
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return Outcome(K.MISCONFIGURED, reason=f"smtp: {exc}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Outcome(K.MISCONFIGURED, reason=f"smtp TLS certificate not trusted: {exc.verify_message}")
        if isinstance(exc, (OSError, smtplib.SMTPException)):
            return Outcome.retry(f"smtp transport: {type(exc).__name__}: {exc}")
        # Anything else leaves the connection in an unknown state (reset above) and may have
        # come after the message went out: failed, never resent, never raised to the batch.
        return Outcome.failed(f"smtp: the client failed ({type(exc).__name__})")

    def _reset(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._reset()

"""Keep device tokens, email addresses and phone numbers out of logs, task fields and reasons.

One function, `redact_text`, for any free text that may quote a target: an exception's
message (pycurl's quotes the APNs URL `https://…/3/device/<token>`), a provider's answer,
a bounce reason. `redact_target` shortens one known target for display. `RedactingFilter`
applies `redact_text` to every record a logging handler emits, tracebacks included, and
`install` puts it on the handlers of a process (uvicorn's access log writes request paths
such as `/v1/users/{id}/devices/{token}`).

What is kept: enough to tell two targets apart (an address's first character and its
domain, a token's or number's last four characters), never the whole of one.
"""
from __future__ import annotations

import logging
import re
from typing import Any

HIDDEN = "…"

# Emails are matched case-insensitively: a provider may quote `Ada@Example.COM` for `ada@example.com`.
_EMAIL = re.compile(r"([a-z0-9._%+'-])[a-z0-9._%+'-]*@((?:[a-z0-9-]+\.)+[a-z]{2,})", re.IGNORECASE)
_EMAIL_ENCODED = re.compile(r"([a-z0-9._+'-])[a-z0-9._+'-]*%40((?:[a-z0-9-]+\.)+[a-z]{2,})", re.IGNORECASE)
# A path segment after /device/ or /devices/ is a token: APNs `/3/device/<token>`, our API's
# `/v1/users/{id}/devices/{token}` (any characters, percent-encoded ones too).
_TOKEN_IN_PATH = re.compile(r"(/devices?/)([^/?#\s\"'<>]+)", re.IGNORECASE)
# A bare run of 40+ token characters: APNs tokens are 64 hex, FCM registration tokens about
# 150 characters. # 40 spares UUIDs (36), which Celery task ids and apns-ids are; a digit in it spares long
# Python names in tracebacks.
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9_:.-])(?=[A-Za-z_:-]*[0-9])[A-Za-z0-9_:-]{36,}([A-Za-z0-9]{4})(?![A-Za-z0-9_:-])")
# E.164 numbers, also as a form encodes them (%2B).
_PHONE = re.compile(r"(?:\+|%2B)[1-9][0-9 ]{5,17}([0-9]{4})(?![0-9])", re.IGNORECASE)


def _tail(value: str) -> str:
    if value.startswith(HIDDEN):
        return value  # already redacted
    return f"{HIDDEN}{value[-4:]}" if len(value) > 8 else HIDDEN


def redact_target(channel: str, target: str | None) -> str | None:
    """Enough of one target to tell two apart, never the whole device token, address or number."""
    if not target or target == "-":
        return None
    if channel == "email" and "@" in target:
        local, _, domain = target.rpartition("@")
        return f"{local[:1]}{HIDDEN}@{domain}"
    if target.startswith("https://"):
        # A browser's push endpoint: its origin names the vendor's push service; the path is the secret.
        origin, _, path = target[len("https://"):].partition("/")
        return f"https://{origin}/{_tail(path)}"
    return _tail(target)


def redact_text(text: str, *targets: str | None) -> str:
    """`text` with every email address, phone number and device token in it shortened.

    `targets` are values known to be secret here (the delivery's own target), hidden
    wherever they appear, in any letter case, even where no pattern would spot them."""
    if not text:
        return text
    for target in targets:
        if target and target != "-" and len(target) >= 3:
            shown = redact_target("email", target) if "@" in target else _tail(target)
            text = re.sub(re.escape(target), lambda _m, shown=shown: shown, text, flags=re.IGNORECASE)
    text = _TOKEN_IN_PATH.sub(lambda m: m.group(1) + _tail(m.group(2)), text)
    text = _EMAIL.sub(lambda m: f"{m.group(1)}{HIDDEN}@{m.group(2)}", text)
    text = _EMAIL_ENCODED.sub(lambda m: f"{m.group(1)}{HIDDEN}%40{m.group(2)}", text)
    text = _PHONE.sub(lambda m: f"{HIDDEN}{m.group(1)}", text)
    return _LONG_TOKEN.sub(lambda m: f"{HIDDEN}{m.group(1)}", text)


def redact_value(value: Any) -> Any:
    """`value` redacted if it is text (or holds text: an exception); numbers and None unchanged."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact_text(value)
    text = str(value)
    redacted = redact_text(text)
    return value if redacted == text else redacted


def _one_line(text: str) -> str:
    # A log message is one line: an id or a provider's answer with CR/LF in it must not
    # forge a line of its own. Tracebacks are not messages and keep their lines.
    return text.replace("\r", "\\r").replace("\n", "\\n") if ("\n" in text or "\r" in text) else text


class RedactingFilter(logging.Filter):
    """Redact the message, the arguments and the traceback of every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.name.startswith("uvicorn.access"):
            # uvicorn's AccessFormatter reads the arguments themselves (client, method, path, …).
            record.args = tuple(redact_value(a) for a in record.args)
        else:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is logging's to report, not ours
                message = None
            if message is not None:
                safe = _one_line(redact_text(message))
                if safe != message:
                    record.msg, record.args = safe, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install(*loggers: logging.Logger | str) -> None:
    """Put a RedactingFilter on every handler of these loggers (the root logger if none)."""
    for logger in loggers or (logging.getLogger(),):
        logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def basic_config(level: str | int) -> None:
    """logging.basicConfig with our format, every line redacted."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install()


class RedactedError(Exception):
    """An exception whose text quoted a token, address or number: its type and redacted text.

    Raised in its place where an exception leaves a task, so neither the worker log nor the
    task's failure event (Flower) nor a result backend holds the original text."""


def redacted_exception(exc: BaseException) -> BaseException:
    """`exc` itself if its text holds no secret, else a RedactedError with the same traceback.

    Both its str and its repr are looked at: Celery shows the repr, and a UnicodeEncodeError's
    str leaves out the text it could not encode (pycurl's: the URL with the token)."""
    text, shown = str(exc), repr(exc)
    if redact_text(text) == text and redact_text(shown) == shown:
        return exc
    return RedactedError(_one_line(redact_text(shown))).with_traceback(exc.__traceback__)


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with every handler redacting (its access log too)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactingFilter"}  # by name: spawned workers
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    # Our own loggers (notifier.*) propagate to the root: give it uvicorn's stderr handler.
    config["root"] = {"handlers": ["default"], "level": "INFO"}
    return config

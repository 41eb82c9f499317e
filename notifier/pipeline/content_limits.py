"""What a rendered delivery must fit in on its channel, checked before it is stored as `queued`.

A template's output is only known once rendered in the user's locale (German runs longer than
English), so each rendered delivery is checked here; one over a limit ends `failed` with the
reason instead of being cut short by its provider (producers' plain title/body keep being
shortened as before):

- push to APNs: the JSON payload at most 4096 bytes (providers.apns.MAX_PAYLOAD_BYTES).
  https://developer.apple.com/documentation/usernotifications/generating-a-remote-notification
- SMS: at most NOTIFIER_SMS_MAX_SEGMENTS segments. A text all in the GSM 03.38 alphabet is sent
  as GSM-7: 160 septets in one segment, 153 per segment when concatenated (the UDH takes 7), the
  extension characters (€ [ ] { } ~ ^ | \\) two septets each; any other character makes the whole
  text UCS-2: 70 UTF-16 code units in one, 67 per segment concatenated.
  https://www.twilio.com/docs/glossary/what-sms-character-limit
- email: the subject one line (a header), the text a body.
- every channel: a title at most 256 characters on one line, a body at most 16 KiB of text (the
  same rules as a producer's own title and body, notifier.intake.validation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import gsm0338  # noqa: F401  (registers the 'gsm03.38' codec)
from pydantic import TypeAdapter, ValidationError

from notifier.intake.validation import Body, Title
from notifier.providers import apns

GSM7, UCS2 = "GSM-7", "UCS-2"
SINGLE = {GSM7: 160, UCS2: 70}
CONCATENATED = {GSM7: 153, UCS2: 67}
_TITLE = TypeAdapter(Title)
_BODY = TypeAdapter(Body)


@dataclass(frozen=True, slots=True)
class SmsSize:
    encoding: str  # GSM-7 or UCS-2
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def sms_size(text: str) -> SmsSize:
    """How many segments `text` takes, and in which encoding."""
    try:
        encoding, units = GSM7, len(text.encode("gsm03.38"))
    except UnicodeEncodeError:
        encoding, units = UCS2, len(text.encode("utf-16-le")) // 2
    segments = 1 if units <= SINGLE[encoding] else math.ceil(units / CONCATENATED[encoding])
    return SmsSize(encoding, units, segments)


def _rule_problem(adapter: TypeAdapter, value: str, what: str) -> str | None:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return f"{what}: {exc.errors(include_url=False, include_input=False)[0]['msg']}"
    return None


def problem(channel: str, provider: str | None, content: Mapping[str, str], data: Mapping[str, Any] | None,
            max_sms_segments: int) -> str | None:
    """Why this rendered content cannot go on `channel` through `provider` (None: it fits)."""
    title, body = content.get("title", ""), content.get("body", "")
    if channel == "email" and len(title.splitlines()) > 1:
        return "email subject must be one line after rendering"
    if title and (found := _rule_problem(_TITLE, title, "title" if channel == "push" else "subject")):
        return found
    if found := _rule_problem(_BODY, body, "body" if channel == "push" else "text"):
        return found
    if channel == "sms":
        size = sms_size(body)
        if size.segments > max_sms_segments:
            return (f"SMS is {size.segments} segments ({size.encoding}, {size.units} "
                    f"{'septets' if size.encoding == GSM7 else 'UTF-16 units'}) after rendering; at most "
                    f"{max_sms_segments} (NOTIFIER_SMS_MAX_SEGMENTS)")
    if channel == "push" and provider == "apns":
        size = apns.payload_bytes(title, body, dict(data or {}))
        if size > apns.MAX_PAYLOAD_BYTES:
            return f"APNs payload is {size} bytes after rendering; at most {apns.MAX_PAYLOAD_BYTES}"
    return None

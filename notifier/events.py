"""The notification event: what producers hand us, validated before anything is queued."""
from __future__ import annotations

import enum
import math
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_EVENT_BYTES = 64 * 1024


class Priority(str, enum.Enum):
    """How urgent an event is; critical bypasses quiet hours."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def lane(self) -> str:
        """The queue lane ('high' or 'low') this priority travels in."""
        return "high" if self in (Priority.CRITICAL, Priority.HIGH) else "low"


class ChannelName(str, enum.Enum):
    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"


class NotificationEvent(BaseModel):
    """One notification for one user, as a producer sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    notification_id: str = Field(min_length=1, max_length=128, description="Producer's id; the idempotency key.")
    user_id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=64, description="What happened, e.g. order_shipped.")
    category: str = Field(min_length=1, max_length=64, description="e.g. transactional, marketing, security.")
    priority: Priority = Priority.NORMAL
    channels: list[ChannelName] | None = Field(None, description="Channels to use; default from type/category.")
    title: str = Field(min_length=1, max_length=256)
    body: str = Field(min_length=1, max_length=16_384)
    data: dict[str, Any] | None = None
    send_at: datetime | None = Field(None, description="Deliver no earlier than this instant (timezone-aware).")

    @field_validator("channels")
    @classmethod
    def _channels_not_empty(cls, v: list[ChannelName] | None) -> list[ChannelName] | None:
        if v is not None and not v:
            raise ValueError("channels must name at least one channel, or be omitted")
        return list(dict.fromkeys(v)) if v else v

    @field_validator("send_at")
    @classmethod
    def _send_at_aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("send_at must carry a timezone offset, e.g. 2026-01-01T09:00:00Z")
        return v.astimezone(timezone.utc) if v else v

    @model_validator(mode="after")
    def _storable_text(self) -> "NotificationEvent":
        # PostgreSQL refuses NUL characters and lone surrogates can't be encoded: refuse them
        # here, naming the field, rather than fail after the producer was told it was accepted.
        # (pydantic already refuses lone surrogates in the str fields; `data` is checked below.)
        for name in ("notification_id", "user_id", "type", "category", "title", "body"):
            if "\x00" in getattr(self, name):
                raise ValueError(f"{name}: NUL characters are not allowed")
        return self

    @field_validator("data")
    @classmethod
    def _storable_data(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        # Lone surrogates and NUL characters (as above), and NaN and Infinity, which Python's
        # json accepts and PostgreSQL's JSON refuses.
        if v:
            _check_text(v, "data")
        return v

    @property
    def lane(self) -> str:
        return self.priority.lane


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where}: NUL characters are not allowed")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: NaN and Infinity are not JSON numbers")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where}.{key!s}")
            _check_text(item, f"{where}.{key!s}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


def describe_errors(exc: ValidationError) -> str:
    """'field: problem; …' for each error, without the input values (they may be personal data)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def parse_event(raw: dict[str, Any] | NotificationEvent) -> NotificationEvent:
    """Validate one event; raises pydantic.ValidationError naming the bad field."""
    if isinstance(raw, NotificationEvent):
        return raw
    return NotificationEvent.model_validate(raw)

"""The notification event: what producers hand us, validated before anything is queued."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from notifier.intake.validation import (  # noqa: F401  (MAX_EVENT_BYTES: imported from here by the edges)
    MAX_DATA_BYTES, MAX_DATA_DEPTH, MAX_EVENT_BYTES, Body, Id, JsonData, Name, Title, send_at_in_range,
)



class Priority(str, enum.Enum):
    """How urgent an event is; critical bypasses quiet hours."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @classmethod
    def of(cls, value: str) -> Priority:
        """The priority a stored delivery names; one we do not know counts as NORMAL (low lane, not critical)."""
        try:
            return cls(value)
        except ValueError:
            return cls.NORMAL

    @property
    def lane(self) -> str:
        """The queue lane ('high' or 'low') this priority travels in."""
        return "high" if self in (Priority.CRITICAL, Priority.HIGH) else "low"

    @property
    def bypasses_user_limits(self) -> bool:
        """Critical events (security alerts) go out despite quiet hours and per-user rate limits."""
        return self is Priority.CRITICAL

    @property
    def may_be_digested(self) -> bool:
        """Only non-urgent events (normal, low) may wait in a digest window; critical and high never do."""
        return self in (Priority.NORMAL, Priority.LOW)


class Channel(str, enum.Enum):
    """The ways we reach a person; each has its own send queues and providers."""

    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"


class NotificationEvent(BaseModel):
    """One notification for one user, as a producer sends it (the rules: notifier/intake/validation.py)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    notification_id: Id = Field(description="Producer's id; the idempotency key.")
    user_id: Id
    type: Name = Field(description="What happened, e.g. order_shipped.")
    category: Name = Field(description="e.g. transactional, marketing, security.")
    priority: Priority = Priority.NORMAL
    channels: list[Channel] | None = Field(None, description="Channels to use; default from type/category.")
    title: Title
    body: Body
    data: JsonData | None = Field(
        None, description=f"JSON object for the app: nested at most {MAX_DATA_DEPTH} deep, at most "
        f"{MAX_DATA_BYTES} bytes as JSON; data.collapse_id at most 64 bytes of printable ASCII.")
    send_at: datetime | None = Field(
        None, description="Deliver no earlier than this instant (timezone-aware; from 2000-01-01 to a year ahead).")

    @field_validator("channels")
    @classmethod
    def _channels_not_empty(cls, v: list[Channel] | None) -> list[Channel] | None:
        if v is not None and not v:
            raise ValueError("channels must name at least one channel, or be omitted")
        return list(dict.fromkeys(v)) if v else v

    @field_validator("send_at")
    @classmethod
    def _send_at_in_range(cls, v: datetime | None) -> datetime | None:
        return send_at_in_range(v)

    @property
    def lane(self) -> str:
        return self.priority.lane


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

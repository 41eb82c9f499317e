"""The notification event: what producers hand us, validated before anything is queued."""
from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from notifier.intake.validation import (  # noqa: F401  (MAX_EVENT_BYTES: imported from here by the edges)
    MAX_DATA_BYTES, MAX_DATA_DEPTH, MAX_EVENT_BYTES, Body, Id, JsonData, LocaleTag, Name, RegisteredApp, Title,
    TtlSeconds, expires_at_ahead, invalid, send_at_in_range,
)
from notifier.intake import templated



# Validation context of an event validated once already, when it was published, that has waited since.
PUBLISHED_EARLIER = "published_earlier"


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
    title: Title | None = Field(None, description="Required unless `template` is given.")
    body: Body | None = Field(None, description="Required unless `template` is given.")
    data: JsonData | None = Field(
        None, description=f"JSON object for the app: nested at most {MAX_DATA_DEPTH} deep, at most "
        f"{MAX_DATA_BYTES} bytes as JSON; data.collapse_id at most 64 bytes of printable ASCII.")
    send_at: datetime | None = Field(
        None, description="Deliver no earlier than this instant (timezone-aware; from 2000-01-01 to a year ahead).")
    app: RegisteredApp | None = Field(
        None, description="The app (NOTIFIER_APPS_FILE) this is about: push goes to the user's devices of that app, "
        "email and SMS from its sender. Omitted: every device, the default sender.")
    expires_at: datetime | None = Field(
        None, description="Not delivered after this instant (timezone-aware, within 28 days): ends `expired`.")
    ttl_s: TtlSeconds | None = Field(None, description="Or: not delivered later than this many seconds after intake.")
    # Instead of title and body: a template rendered per channel in the user's locale (docs/templates.md).
    template: Name | None = Field(None, description="A template's name (NOTIFIER_TEMPLATES_DIR/<template>/), instead "
                                  "of title and body.")
    locale: LocaleTag | None = Field(None, description="Render in this locale (BCP 47) rather than the user's.")
    params: JsonData | None = Field(None, validate_default=True, description="The values the template names.")

    # Both a template and a title/body: refused before the fields (the template's checks would only confuse).
    @model_validator(mode="before")
    @classmethod
    def _not_both(cls, raw: Any) -> Any:
        return templated.not_both(raw)

    # The rest after the fields: an event missing its notification_id, user_id, … is told about those first.
    @model_validator(mode="after")
    def _title_and_body_or_template(self) -> "NotificationEvent":
        templated.content_given({name: getattr(self, name) for name in templated.CONTENT_FIELDS})
        return self

    @field_validator("template")
    @classmethod
    def _template_has_the_channels(cls, v: str | None, info: ValidationInfo) -> str | None:
        return templated.check_template(v, info.data)

    @field_validator("params")
    @classmethod
    def _params_fit_the_template(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        return templated.check_params(v, info.data)

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

    @field_validator("expires_at")
    @classmethod
    def _expires_at_ahead(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        return expires_at_ahead(v, past_ok=bool(info.context and info.context.get(PUBLISHED_EARLIER)))

    @model_validator(mode="after")
    def _one_expiry_after_send_at(self) -> NotificationEvent:
        if self.expires_at is not None and self.ttl_s is not None:
            raise invalid("expires_at and ttl_s: give one of them, not both")
        if self.send_at is not None:
            ends = self.expires_at or (datetime.now(timezone.utc) + timedelta(seconds=self.ttl_s)
                                       if self.ttl_s is not None else None)
            if ends is not None and ends <= self.send_at:
                raise invalid("expires_at (or ttl_s) ends before send_at: the notification could never be sent")
        return self

    @property
    def lane(self) -> str:
        return self.priority.lane


def describe_errors(exc: ValidationError) -> str:
    """'field: problem; …' for each error, without the input values (they may be personal data)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def parse_event(raw: dict[str, Any] | NotificationEvent, *, published_earlier: bool = False) -> NotificationEvent:
    """Validate one event; raises pydantic.ValidationError naming the bad field.

    published_earlier: it was validated when published (Kafka, a queued task) and may have
    expired while it waited; it is accepted, and its deliveries end `expired`."""
    if isinstance(raw, NotificationEvent):
        return raw
    return NotificationEvent.model_validate(raw, context={PUBLISHED_EARLIER: published_earlier})

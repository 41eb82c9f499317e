"""The one interface every provider adapter implements, and what it returns."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Sequence


class OutcomeKind(str, enum.Enum):
    """What a provider's answer means for the delivery."""

    OK = "ok"                        # accepted; message_id set
    RETRY = "retry"                  # transient; try again (after retry_after when given)
    FAILED = "failed"                # permanent; never retry
    TOKEN_INVALID = "token_invalid"  # the device token is dead: delete it
    UNSUBSCRIBED = "unsubscribed"    # the recipient opted out at the provider: turn the channel off
    MISCONFIGURED = "misconfigured"  # our credentials or setup are wrong: alert, retry later


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    reason: str | None = None
    message_id: str | None = None
    retry_after_s: float | None = None
    # For token_invalid from APNs 410: when the provider last saw the token invalid.
    invalid_since: datetime | None = None

    @classmethod
    def ok(cls, message_id: str | None) -> "Outcome":
        return cls(OutcomeKind.OK, message_id=message_id)

    @classmethod
    def retry(cls, reason: str, retry_after_s: float | None = None) -> "Outcome":
        return cls(OutcomeKind.RETRY, reason=reason, retry_after_s=retry_after_s)

    @classmethod
    def failed(cls, reason: str) -> "Outcome":
        return cls(OutcomeKind.FAILED, reason=reason)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What an adapter needs to send one delivery (a notification_log row, flattened)."""

    id: int
    idempotency_key: str
    channel: str
    provider: str
    target: str
    priority: str
    category: str
    type: str
    title: str
    body: str
    notification_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    collapse_id: str | None = None
    expires_at: datetime | None = None


class Provider(Protocol):
    """Send a batch of deliveries and classify each answer."""

    name: str

    def send_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Return one outcome per delivery, in order."""
        ...

    def close(self) -> None:
        ...

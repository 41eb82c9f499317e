"""The one interface every provider adapter implements, and what it returns."""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol, Sequence


log = logging.getLogger(__name__)


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
    html: str | None = None  # email: an HTML alternative to the text body (a template's html)
    app: str | None = None  # None: the default app (notifier/apps.py)


# Called with a delivery's index in the batch and its final outcome; see Provider.send_batch.
OnOutcome = Callable[[int, Outcome], None]


class Provider(Protocol):
    """Send a batch of deliveries and classify each answer."""

    name: str

    def send_batch(self, deliveries: Sequence[Delivery], on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Return one outcome per delivery, in order; never raise for a problem of one delivery.

        A delivery that cannot be built or sent (a value that cannot be encoded, a header
        that would carry CR/LF, a malformed device token, an exception in the client, an
        answer that cannot be read) ends with its own outcome, FAILED (TOKEN_INVALID for
        a malformed device token) with a reason that names the problem but never quotes
        the target, and the rest of the batch goes on.

        ``on_outcome(index, outcome)`` is called exactly once per delivery, in the calling
        thread, as soon as that delivery's final outcome is known (after any resend the
        adapter makes itself), in completion order, and always before send_batch returns:
        while the rest of the batch is still in flight where the adapter sends at once.
        It lets the caller record an acceptance the moment it happens. It must be cheap
        (the other sends wait while it runs) and should not raise: an exception from it
        is logged (its type and the index only) and ignored, so one failed record never
        aborts the remaining sends. The caller should therefore still record the outcomes
        send_batch returns; the hook narrows the window, it is not the only record.
        """
        ...

    def close(self) -> None:
        ...


def classify_safely(classify: Callable[[Any], Outcome], provider: str, resp: Any) -> Outcome:
    """`classify(resp)`, or `failed` naming the provider and status when the answer cannot be read:
    one unreadable answer never fails the batch."""
    try:
        return classify(resp)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return Outcome.failed(f"{provider} {resp.status}: the answer could not be read ({type(exc).__name__})")


def report_outcome(on_outcome: OnOutcome | None, index: int, outcome: Outcome) -> None:
    """Call on_outcome as Provider.send_batch documents: an exception from it is logged and ignored."""
    if on_outcome is None:
        return
    try:
        on_outcome(index, outcome)
    except Exception as exc:  # noqa: BLE001 - the remaining sends must go on (Provider.send_batch)
        log.error("on_outcome callback raised %s for delivery #%d of the batch; sending goes on",
                  type(exc).__name__, index)


def printable_ascii(text: object) -> bool:
    """Tell whether text is a str of printable ASCII only (no CR, LF, NUL or other control)."""
    return isinstance(text, str) and text.isascii() and text.isprintable()


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or an HTTP date (the backoff decides then)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None

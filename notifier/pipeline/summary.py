"""What a stage's task did, as the data Flower shows: counts per outcome, the notifications handled.

A send task's result counts what became of each delivery it was handed (`send_summary`); every
stage's result names the notifications whose deliveries it read or wrote (`notifications`), so
Flower's search finds a notification's tasks. Notification ids are the producer's and could
quote an address: they are shown redacted, and at most MAX_SHOWN of them (Flower keeps every
result in memory; the rest are counted, and the delivery row's task_id still leads to the task).
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from notifier.ops.redaction import redact_text
from notifier.providers import OutcomeKind
from notifier.store.models import Status

MAX_SHOWN = 50

# What became of one delivery handed to a send task.
SENT = "sent"  # the provider accepted it (or had, before a worker died: recorded on recovery)
RETRY = "retry"  # a transient failure: `scheduled` for another attempt
FAILED = "failed"  # a permanent failure, or the last attempt
TOKEN_INVALID = "token_invalid"  # the device token is dead (deleted)
UNSUBSCRIBED = "unsubscribed"  # the recipient unsubscribed at the provider (channel turned off)
DUPLICATE = "duplicate"  # another run holds its lease: this message was a repeat
SKIPPED = "skipped"  # no longer `sending` when the task ran (cancelled, or recorded by another run)
OUTCOMES = (SENT, RETRY, FAILED, TOKEN_INVALID, UNSUBSCRIBED, DUPLICATE, SKIPPED)
NOT_SENT = (RETRY, FAILED, TOKEN_INVALID, UNSUBSCRIBED)  # attempted, and not accepted


def send_outcome(kind: OutcomeKind, status: str) -> str:
    """The outcome name of one attempt, from the provider's answer and the status the row got."""
    if status == Status.SENT.value:
        return SENT
    if status == Status.SCHEDULED.value:
        return RETRY
    if kind is OutcomeKind.TOKEN_INVALID:
        return TOKEN_INVALID
    if kind is OutcomeKind.UNSUBSCRIBED:
        return UNSUBSCRIBED
    return FAILED


def notifications(notification_ids: Iterable[str]) -> dict[str, Any]:
    """The notifications a task handled, redacted, at most MAX_SHOWN (and how many more)."""
    unique = sorted(set(notification_ids))
    shown: dict[str, Any] = {"notifications": [redact_text(n) for n in unique[:MAX_SHOWN]]}
    if len(unique) > MAX_SHOWN:
        shown["notifications_more"] = len(unique) - MAX_SHOWN
    return shown


def shown_in_args(notification_ids: Iterable[str]) -> str:
    """The notifications a queued task is for, as its arguments in Flower show them (searchable in any state)."""
    shown = notifications(notification_ids)
    more = f",…+{shown['notifications_more']}" if "notifications_more" in shown else ""
    return f"notifications=[{','.join(shown['notifications'])}{more}]"


def claim_summary(handed: int, claimed: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """A filter or dedup task's result: of the `handed` deliveries, how many its dedup stage claimed
    and handed to each channel's send queue (the rest was suppressed, deferred, limited, expired, or
    held elsewhere: each row says which)."""
    return {"deliveries": handed, "claimed": {channel: len(ids) for channel, ids in sorted(claimed.items())}}


def send_summary(handed: int, outcomes: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """A send task's result: of the `handed` deliveries, how many came to each outcome.

    `outcomes` holds (notification_id, outcome) for each delivery the task answered for; the
    rest of what it was handed was no longer `sending` (SKIPPED)."""
    counts = Counter(outcome for _, outcome in outcomes)
    counts[SKIPPED] += handed - len(outcomes)
    return {"deliveries": handed, **{name: counts[name] for name in OUTCOMES}} | notifications(
        notification_id for notification_id, _ in outcomes)


def nothing_sent(summary: dict[str, Any]) -> bool:
    """True when the batch was attempted and no delivery of it was sent: every one failed or waits to retry."""
    return summary[SENT] == 0 and any(summary[name] for name in NOT_SENT)


def describe(summary: dict[str, Any]) -> str:
    """One line for a task that sent nothing: the counts in words, then the whole summary as JSON."""
    counts = ", ".join(f"{summary[name]} {name}" for name in NOT_SENT if summary[name])
    attempted = sum(summary[name] for name in NOT_SENT)
    return (f"none of {attempted} deliveries sent ({counts}): "
            + json.dumps(summary, separators=(", ", ": "), ensure_ascii=False))

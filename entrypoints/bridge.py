"""The bridge's main: a Bridge whose hand-over is the pipeline's send_notifications task.

The Bridge itself (notifier.intake.bridge) knows nothing of Celery; this is where the two meet.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from notifier.intake.bridge.consumer import Bridge
from notifier.intake.bridge.messages import DEFAULT_TOPICS
from notifier.intake.events import NotificationEvent


def enqueue_to_celery(events: list[NotificationEvent], lane: str) -> None:
    """Hand one lane's batch to the pipeline as one send_notifications task."""
    from tasks.pipeline import send_notifications

    send_notifications.delay(events)


def run(topics: Mapping[str, str] | Sequence[str] = DEFAULT_TOPICS, **options: Any) -> int:
    """Run a bridge until SIGTERM or SIGINT; return the process exit code."""
    # Import the hand-over (the Celery app, every task module, the pipeline) before joining the
    # group: imported lazily, ~0.5 s of CPU landed on the first batch, delaying its events and
    # counted by the bench as per-delivery cost (a third of the low bridge's CPU at 10,000 events).
    import tasks.pipeline  # noqa: F401

    return Bridge(topics, hand_over=enqueue_to_celery, **options).run()

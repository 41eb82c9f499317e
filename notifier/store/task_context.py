"""The Celery task running in this thread, for the delivery rows it touches.

tasks/ opens a `TaskRecord` around each task body (`running`); the delivery log then stamps the
task's id on every row it inserts or updates (`notification_log.task_id`: from a delivery to its
task in Flower) and notes the notification ids of the rows it reads or writes (what the task's
result names, so Flower's search finds the tasks of a notification). Both ride on statements the
stages make anyway: no statement is added per delivery or per batch.

Outside a task (the producer's intake, the API's webhooks, a CLI command) there is no record:
rows keep the task id they had. The product stays free of Celery: this is a plain contextvar.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterable, Iterator


@dataclass(slots=True)
class TaskRecord:
    """One task's run: its id, and the notifications whose deliveries it read or wrote."""

    task_id: str
    notification_ids: set[str] = field(default_factory=set)

    def note(self, notification_ids: Iterable[str]) -> None:
        self.notification_ids.update(notification_ids)


_CURRENT: ContextVar[TaskRecord | None] = ContextVar("notifier_task_record", default=None)


def current() -> TaskRecord | None:
    """The record of the task running here, or None outside a task."""
    return _CURRENT.get()


@contextmanager
def running(task_id: str | None) -> Iterator[TaskRecord | None]:
    """Make `task_id` the current task for the block (None: no task, nothing stamped)."""
    record = TaskRecord(task_id) if task_id else None
    token = _CURRENT.set(record)
    try:
        yield record
    finally:
        _CURRENT.reset(token)

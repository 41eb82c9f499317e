"""Stacks of their own inside one test run: workers on a broker key prefix nobody else reads."""
from __future__ import annotations

import os
from contextlib import contextmanager

from notifier.redis_conn import broker_redis
from tasks.app import app


@contextmanager
def isolated_broker(name: str):
    """A broker key prefix (NOTIFIER_BROKER_KEY_PREFIX) of this test's own; its keys are removed after."""
    prefix = f"{name}-{os.getpid()}:"
    try:
        yield prefix
    finally:
        r = broker_redis()
        for key in r.scan_iter(match=prefix + "*"):
            r.delete(key)


def produce(prefix: str, task, *args) -> None:
    """Send a task to the workers of one isolated broker prefix."""
    with app.connection_for_write(transport_options={"global_keyprefix": prefix}) as conn:
        task.apply_async(args, connection=conn)

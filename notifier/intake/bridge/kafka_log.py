"""librdkafka's log through ours, with repeats said once per interval (Kafka down reconnects often)."""
from __future__ import annotations

import logging
import re
import time
from typing import Any


# While Kafka is down librdkafka reports every reconnect attempt; say so once per this many seconds.
REPEAT_LOG_S = 30.0


class Throttle:
    """Let an event through once per `interval_s` per key, counting the ones held back."""

    def __init__(self, interval_s: float = REPEAT_LOG_S) -> None:
        self.interval_s = interval_s
        self._seen: dict[Any, tuple[float, int]] = {}

    def allow(self, key: Any) -> int | None:
        """None if held back; else how many were held back since the last one let through."""
        now = time.monotonic()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, held + 1)
            return None
        self._seen[key] = (now, 0)
        return held


class _RepeatFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka logs librdkafka lines as ("%s [%s] %s", facility, client, text).
        key = record.args[:2] if isinstance(record.args, tuple) and len(record.args) == 3 else record.msg
        held = self._throttle.allow(key)
        if held:
            record.msg = f"{record.msg} ({held} similar held back)"
        return held is not None


def kafka_logger() -> logging.Logger:
    """The logger for librdkafka's own lines; a reconnect storm shows once per REPEAT_LOG_S."""
    logger = logging.getLogger("notifier.kafka")
    if not any(isinstance(f, _RepeatFilter) for f in logger.filters):
        logger.addFilter(_RepeatFilter())
    return logger

"""Rebalances and Kafka errors: partitions assigned, revoked (hand over, commit) or lost."""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Iterable

from confluent_kafka import Consumer, KafkaError, TopicPartition

log = logging.getLogger(__name__)

# Errors librdkafka recovers from by itself (reconnecting, re-resolving the coordinator).
TRANSIENT_ERRORS = {
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
    KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError._WAIT_COORD,
}


class Rebalances:
    """The Bridge's rebalance and error callbacks."""

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._ledger.assign(partitions)
        log.info("bridge: assigned %s", _describe(partitions) or "no partitions")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            if partitions and not self._closing:
                log.info("bridge: revoking %s; handing over and committing first", _describe(partitions))
            deadline = time.monotonic() + (0.0 if self._closing else self.revoke_timeout_s)
            self._hand_over_all(deadline)
            self._confirm_dead_letters(deadline)
            self._commit(force=True)
        except Exception:  # noqa: BLE001 - an exception here would escape from consume()
            log.exception("bridge: flushing before a rebalance failed")
        finally:
            # What was not committed is delivered again to the partition's next owner.
            self._ledger.forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: committing would overwrite its progress.
        log.warning("bridge: lost %s; uncommitted events will be consumed again", _describe(partitions))
        self._ledger.forget(partitions)

    def _on_kafka_error(self, err: KafkaError, where: str = "") -> None:
        if err.fatal():
            log.critical("bridge: fatal Kafka error %s: %s", err.name(), err.str())
            self._fatal = err
            return
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._brokers_down = True
        held = self._error_throttle.allow((err.code(), where))
        if held is None:
            return
        # A topic just created is briefly unknown; one that stays unknown keeps being reported.
        transient = err.code() in TRANSIENT_ERRORS or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        log.log(logging.WARNING if transient else logging.ERROR, "bridge: Kafka %s%s: %s%s%s", err.name(),
                f" on {where}" if where else "", err.str(), " (librdkafka retries by itself)" if transient else "",
                f" ({held} similar held back)" if held else "")


def _describe(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)

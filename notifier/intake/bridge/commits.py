"""Commits: the ledger's committable offsets to the group coordinator, and the drain before stopping."""
from __future__ import annotations

import logging
import re
import time

from confluent_kafka import KafkaException, TopicPartition

log = logging.getLogger(__name__)


class Commits:
    """The Bridge's commit side."""

    def _commit(self, force: bool = False) -> bool:
        """Commit, per partition, the first offset not yet handed over; True if nothing is left uncommitted."""
        if not force and time.monotonic() < self._commit_retry_at:
            return False
        if self._letters_in_flight and force:
            # A dead letter counts as handed over only once Kafka has it.
            self._producer.flush(self.dead_letter_flush_s)
        offsets = self._ledger.committable()
        if not offsets:
            return True
        if not self._coordinator_answers(offsets):
            self._commit_retry_at = time.monotonic() + 1.0
            return False
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Redelivery after a failed commit is harmless (dedup); try again shortly.
            self._commit_retry_at = time.monotonic() + 1.0
            log.warning("bridge: commit failed (%s); will retry", exc.args[0].str())
            return False
        self._ledger.committed(result or [])
        self.stats.commits += 1
        failed = [tp for tp in result or [] if tp.error is not None]
        for tp in failed:
            log.warning("bridge: commit of %s[%d]@%d failed: %s", tp.topic, tp.partition, tp.offset, tp.error.str())
        return not failed

    def _coordinator_answers(self, offsets: list[TopicPartition]) -> bool:
        """After Kafka reported brokers down, check the group coordinator answers before committing.

        A synchronous commit waits for the coordinator until the session times out (45 s by
        default); a committed() lookup takes a timeout.
        """
        if not self._brokers_down:
            return True
        try:
            self._consumer.committed(offsets[:1], timeout=1.0)
        except KafkaException as exc:
            log.debug("bridge: coordinator not answering: %s", exc)
            return False
        self._brokers_down = False
        return True

    def _drain(self) -> bool:
        """On stop: hand over what was consumed, confirm dead letters, commit; True if all of it succeeded."""
        deadline = time.monotonic() + self.shutdown_timeout_s
        handed = self._hand_over_all(deadline)
        confirmed = self._confirm_dead_letters(deadline)
        committed = self._commit(force=True)
        if not (handed and confirmed):
            log.error("bridge: stopping with %d events not handed over; Kafka will deliver them again to the "
                      "partitions' next consumer", self._ledger.pending_count())
        elif not committed:
            log.error("bridge: stopping without committing every offset; what was handed over since the last "
                      "commit will be consumed again (and recorded as duplicates)")
        return handed and confirmed and committed

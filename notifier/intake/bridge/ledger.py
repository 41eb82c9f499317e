"""The offset ledger: commit a partition only up to the first offset not yet handed over."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable

from confluent_kafka import TopicPartition


@dataclass(slots=True)
class _PartitionProgress:
    next_offset: int | None = None  # one past the last consumed message
    pending: set[int] = field(default_factory=set)  # consumed, not yet handed over
    committed: int | None = None


class OffsetLedger:
    """Per assigned partition: which consumed offsets are not yet handed over, and so what may be committed."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _PartitionProgress] = {}

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = _PartitionProgress()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.pop((tp.topic, tp.partition), None)

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        progress = self._partitions.get((topic, partition))
        if progress is not None:  # never track (and so never commit) a partition we do not own
            progress.pending.add(offset)
            progress.next_offset = offset + 1

    def handed_over(self, topic: str, partition: int, offset: int) -> None:
        progress = self._partitions.get((topic, partition))
        if progress is not None:
            progress.pending.discard(offset)

    def committable(self) -> list[TopicPartition]:
        """Per partition whose safe point moved: the first offset not yet handed over."""
        offsets = []
        for (topic, partition), progress in self._partitions.items():
            if progress.next_offset is None:
                continue
            safe = min(progress.pending) if progress.pending else progress.next_offset
            if safe != progress.committed:
                offsets.append(TopicPartition(topic, partition, safe))
        return offsets

    def committed(self, offsets: Iterable[TopicPartition]) -> None:
        for tp in offsets:
            progress = self._partitions.get((tp.topic, tp.partition))
            if progress is not None and tp.error is None:
                progress.committed = tp.offset

    def pending_count(self) -> int:
        return sum(len(p.pending) for p in self._partitions.values())

"""Dead letters: the record a refused message becomes, and the bridge's producing of them (retried while events flow on)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Iterable

from confluent_kafka import KafkaError, KafkaException, Message

log = logging.getLogger(__name__)


# A dead letter must fit one Kafka record. librdkafka refuses a produce whose key, value and
# serialized headers exceed the producer's message.max.bytes (default 1,000,000), and the
# broker refuses a record batch over its message.max.bytes (default 1,048,588; a topic may
# set a lower max.message.bytes). A bigger letter keeps a prefix of the value so that the
# whole, with our headers and framing, stays under the producer's limit; a topic that still
# refuses it gets the letter again at half the size, down to DEAD_LETTER_MIN_BYTES.
DEAD_LETTER_MAX_BYTES = 1_000_000 - 8 * 1024


DEAD_LETTER_MIN_BYTES = 16 * 1024


# Per header: the varint lengths of its name and value.
HEADER_OVERHEAD = 10


# A truncated letter keeps at most this much of the key and of the producer's own headers.
TRUNCATED_KEY_BYTES = 1024


TRUNCATED_HEADERS_BYTES = 8 * 1024


# Backoff between attempts to produce a dead letter that Kafka refused.
DEAD_LETTER_RETRY_MIN_S, DEAD_LETTER_RETRY_MAX_S = 0.5, 30.0


# While dead letters wait for the dead-letter topic, valid events keep flowing; past this many
# bytes of them the bridge stops fetching until they are out, so memory stays bounded.
UNSENT_LETTERS_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message on its way to the dead-letter topic: the original bytes, where they came from and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str
    source_headers: tuple[tuple[str, bytes], ...] = ()
    max_bytes: int = DEAD_LETTER_MAX_BYTES

    @classmethod
    def of(cls, msg: Message, error: str, max_bytes: int = DEAD_LETTER_MAX_BYTES) -> "DeadLetter":
        source_headers = tuple((k, v if v is not None else b"") for k, v in (msg.headers() or []))
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), error, source_headers,
                   max_bytes)

    @property
    def size(self) -> int:
        """Bytes this letter holds in memory (the original key, value and headers)."""
        return len(self.key or b"") + len(self.value or b"") + _headers_size(self.source_headers)

    def smaller(self) -> "DeadLetter | None":
        """The same letter cut to half its byte budget, or None if it is already at the floor."""
        if self.max_bytes <= DEAD_LETTER_MIN_BYTES:
            return None
        return DeadLetter(self.topic, self.partition, self.offset, self.key, self.value, self.error,
                          self.source_headers, max(self.max_bytes // 2, DEAD_LETTER_MIN_BYTES))

    def record(self) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """Key, value and headers to produce: the whole message if it fits in max_bytes, else a prefix."""
        ours = [
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            ("error", self.error[:4096].encode(errors="replace")),
        ]
        # The producer's own headers follow ours, so nothing of the original is lost.
        whole = ours + list(self.source_headers)
        if len(self.key or b"") + len(self.value or b"") + _headers_size(whole) <= self.max_bytes:
            return self.key, self.value, whole
        value = self.value or b""
        ours += [
            ("truncated", b"true"),
            ("original_size", str(len(value)).encode()),
            ("original_sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        key = self.key
        if key is not None and len(key) > TRUNCATED_KEY_BYTES:
            ours += [("original_key_size", str(len(key)).encode()),
                     ("original_key_sha256", hashlib.sha256(key).hexdigest().encode())]
            key = key[:TRUNCATED_KEY_BYTES]
        kept: list[tuple[str, bytes]] = []
        for header in self.source_headers:
            if _headers_size([*kept, header]) > min(TRUNCATED_HEADERS_BYTES, self.max_bytes // 4):
                break
            kept.append(header)
        if len(kept) < len(self.source_headers):
            ours.append(("original_headers_dropped", str(len(self.source_headers) - len(kept)).encode()))
        headers = ours + kept
        room = self.max_bytes - len(key or b"") - _headers_size(headers)
        return key, value[:max(room, 0)], headers


def _headers_size(headers: Iterable[tuple[str, bytes]]) -> int:
    return sum(len(k.encode()) + len(v) + HEADER_OVERHEAD for k, v in headers)


class DeadLetters:
    """The Bridge's dead-letter side: queue, produce, confirm, retry what Kafka refused."""

    def _dead_letter(self, letter: DeadLetter) -> None:
        self._unsent_letters.append(letter)
        self._letter_bytes += letter.size
        self._send_dead_letters()

    def _send_dead_letters(self) -> None:
        """Produce the waiting dead letters, unless Kafka refused one lately and the backoff runs."""
        if time.monotonic() < self._letter_retry_at:
            return
        while self._unsent_letters:
            letter = self._unsent_letters[0]
            key, value, headers = letter.record()
            try:
                self._producer.produce(self.dead_letter_topic, value=value, key=key, headers=headers,
                                       on_delivery=functools.partial(self._dead_lettered, letter))
            except BufferError:
                self._producer.poll(0.05)  # librdkafka's queue is full; try again next step
                return
            except KafkaException as exc:
                smaller = letter.smaller() if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE else None
                if smaller is not None:
                    self._unsent_letters[0] = smaller
                    continue
                self._unsent_letters[0] = self._full_size(letter)
                self._dead_letter_refused(letter, exc.args[0])
                return
            self._unsent_letters.popleft()
            self._letters_in_flight += 1

    def _dead_lettered(self, letter: DeadLetter, err: KafkaError | None, _msg: Message) -> None:
        self._letters_in_flight -= 1
        if err is not None:
            smaller = letter.smaller() if err.code() == KafkaError.MSG_SIZE_TOO_LARGE else None
            if smaller is not None:
                # The topic's max.message.bytes is below the producer's: try again at half the size.
                self._unsent_letters.appendleft(smaller)
            else:
                self._unsent_letters.append(self._full_size(letter))
                self._dead_letter_refused(letter, err)
            return
        self._ledger.handed_over(letter.topic, letter.partition, letter.offset)
        self._letter_bytes -= letter.size
        self.stats.dead_lettered += 1
        self._letter_retry_delay = 0.0

    def _full_size(self, letter: DeadLetter) -> DeadLetter:
        # The next attempt, after the backoff, starts whole again: the topic may have been fixed.
        return dataclasses.replace(letter, max_bytes=self.dead_letter_max_bytes)

    def _dead_letter_refused(self, letter: DeadLetter, err: KafkaError) -> None:
        """Back off before producing dead letters again, and say so once per REPEAT_LOG_S."""
        self._letter_retry_delay = min(max(self._letter_retry_delay * 2, DEAD_LETTER_RETRY_MIN_S),
                                       DEAD_LETTER_RETRY_MAX_S)
        self._letter_retry_at = time.monotonic() + self._letter_retry_delay
        held = self._error_throttle.allow(("dead-letter", err.code()))
        if held is not None:
            log.error("bridge: %s refused the dead letter for %s[%d]@%d (%s); %d waiting, retrying in %.1fs; "
                      "valid events go on, offsets wait at the letter%s", self.dead_letter_topic, letter.topic,
                      letter.partition, letter.offset, err.str(), len(self._unsent_letters),
                      self._letter_retry_delay, f" ({held} similar held back)" if held else "")

    def _confirm_dead_letters(self, deadline: float) -> bool:
        """Wait (until `deadline`) for Kafka to acknowledge every dead letter; True if it did."""
        while True:
            self._send_dead_letters()
            if self._letters_in_flight:
                self._producer.flush(max(min(deadline - time.monotonic(), self.dead_letter_flush_s), 0.0))
            if not self._unsent_letters and not self._letters_in_flight:
                return True
            if time.monotonic() >= deadline:
                return False
            if self._unsent_letters and not self._letters_in_flight:
                time.sleep(min(max(self._letter_retry_at - time.monotonic(), 0.01), 0.1))

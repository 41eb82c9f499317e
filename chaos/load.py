"""The campaign's load: users with iOS devices, and events produced to Kafka at a bounded rate."""
from __future__ import annotations

import json
import random
import secrets
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException


def register_users(prefix: str, n: int) -> list[str]:
    """n users, each with one iOS device token (so pushes go to the sandbox's APNs)."""
    from notifier.accounts.devices import register_device

    users = [f"{prefix}-u{i}" for i in range(n)]
    for user in users:
        register_device(user, secrets.token_hex(32), "ios")
    return users


def make_events(prefix: str, n: int, users: list[str], *, high_share: float = 0.2, seed: int = 9) -> list[dict]:
    """n push events over the users, a share of them high priority, each marked with the scenario."""
    rng = random.Random(seed)
    return [{
        "notification_id": f"{prefix}-e{i}",
        "user_id": rng.choice(users),
        "type": "chaos",
        "category": "transactional",
        "priority": "high" if rng.random() < high_share else "normal",
        "channels": ["push"],
        "title": "Chaos",
        "body": "An order update of ordinary length, sent while something breaks.",
        "data": {"chaos": prefix},
    } for i in range(n)]


def poison_messages(n: int, large: int, *, large_bytes: int = 999_950, seed: int = 5) -> list[bytes]:
    """n malformed messages of several kinds, `large` of them about a megabyte (below Kafka's limit)."""
    rng = random.Random(seed)
    kinds = [
        lambda i: b"\xff\xfe not json at all",
        lambda i: b"[1, 2, 3]",
        lambda i: json.dumps({"user_id": "u", "type": "chaos"}).encode(),  # no notification_id
        lambda i: json.dumps({"notification_id": f"poison-{i}", "user_id": "u", "type": "chaos",
                              "priority": "urgent!"}).encode(),
        lambda i: b"",
        lambda i: b'{"notification_id": "poison-truncated", "user_id": ',
    ]
    out = [rng.choice(kinds)(i) for i in range(n)]
    for i in range(large):
        if i % 2:
            out.append(rng.randbytes(large_bytes))  # binary junk
        else:  # an event whose body is far above MAX_EVENT_BYTES
            out.append(json.dumps({"notification_id": f"poison-large-{i}", "user_id": "u", "type": "chaos",
                                   "title": "t", "body": "x" * (large_bytes - 110)}).encode())
    rng.shuffle(out)
    return out


@dataclass
class Load:
    """Produces events (and poison) to the scenario's topics from a thread, at `rate` per second."""

    events: list[dict]
    topics: dict[str, str]
    rate: float
    poison: list[bytes] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    poison_acked: int = 0
    poison_refused: list[str] = field(default_factory=list)  # by our own producer, before Kafka saw them
    produced: int = 0
    last_ack: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._thread.start()

    @property
    def progress(self) -> float:
        return self.produced / max(1, len(self.events))

    def wait_progress(self, fraction: float, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while self.progress < fraction and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def join(self) -> None:
        """Wait for the producing to end and Kafka to acknowledge what was produced."""
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _on_event(self, nid: str):
        def delivered(err, _msg) -> None:
            if err is None:
                self.acked.add(nid)
                self.last_ack = time.time()
            else:
                self.failed[nid] = err.str()
        return delivered

    def _on_poison(self, err, _msg) -> None:
        if err is None:
            self.poison_acked += 1

    def _run(self) -> None:
        from notifier.intake.events import parse_event
        from notifier.intake.publish import flush, get_producer, publish

        try:
            producer = get_producer()
            # Poison is spread evenly through the stream, half to each lane.
            every = max(1, len(self.events) // max(1, len(self.poison))) if self.poison else 0
            poison = list(self.poison)
            self.started = time.time()
            for i, event in enumerate(self.events):
                if every and i % every == 0 and poison:
                    value = poison.pop()
                    self._produce_raw(producer, self.topics["low" if len(poison) % 2 else "high"], value)
                publish(event, topic=self.topics[parse_event(event).lane],
                        on_delivery=self._on_event(event["notification_id"]))
                self.produced += 1
                time.sleep(max(0.0, self.started + (i + 1) / self.rate - time.time()))
            for value in poison:
                self._produce_raw(producer, self.topics["low"], value)
            self.finished = time.time()
            # Acknowledgements are reported from poll()/flush(): flushed here, last_ack is when Kafka
            # acknowledged the last event, not when some later call happened to collect it.
            flush(120)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def _produce_raw(self, producer, topic: str, value: bytes) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                producer.produce(topic, value=value, key=b"poison", on_delivery=self._on_poison)
                producer.poll(0)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise
                producer.poll(0.1)
            except KafkaException as exc:
                self.poison_refused.append(f"{len(value)} bytes: {exc.args[0].str()}")
                return

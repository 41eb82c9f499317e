"""A SIGKILLed bridge, started again, takes its partitions back within seconds, not librdkafka's 45 s.

Measured here with restart_takes(): librdkafka's defaults (-X session.timeout.ms=45000
-X heartbeat.interval.ms=3000) gave 45.0 s; the bridge's own settings 10.0 s; with a stable
instance id (static membership) 2.6 s, most of it the new process starting.
"""
from __future__ import annotations

import json
import time

from notifier.intake.bridge.consumer import INSTANCE_ID_ENV, SESSION_TIMEOUT_MS
from tests.integration.environment import child_env
from tests.integration.test_bridge import PARTITIONS, Topics, _produce, bridges, needs_kafka, topics  # noqa: F401 - fixtures

# The helper's bridges set -X session.timeout.ms=6000; these put back what the bridge itself chooses.
OWN_SETTINGS = ("-X", f"session.timeout.ms={SESSION_TIMEOUT_MS}")


def _events(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"u-{i}".encode(), json.dumps({"notification_id": f"n-{i}-{time.monotonic_ns()}", "user_id": f"u-{i}",
                                            "type": "t", "category": "social", "title": "Hi", "body": "Yo"}).encode())
            for i in range(n)]


def restart_takes(topics: Topics, bridges, wait_until, *args: str, env: dict[str, str] | None = None) -> float:
    """SIGKILL a bridge that owns every partition, start another; seconds until it consumes from all of them."""
    first = bridges(topics, "--batch-ms", "50", *args, env=env)
    wait_until(lambda: "assigned bridge-" in first.log(), timeout_s=60, message=first.log()[-2000:])
    _produce(topics.low, _events(8))
    wait_until(lambda: first.stat("handed_over") == 8, timeout_s=30, message=first.log()[-2000:])
    first.proc.kill()
    first.proc.wait(10)

    started = time.monotonic()
    second = bridges(topics, "--batch-ms", "50", *args, env=env)
    positions = _produce(topics.low, _events(40))
    assert len({p for p, _ in positions}) == PARTITIONS, "every partition has a new event"
    wait_until(lambda: second.stat("consumed") >= 40, timeout_s=90, interval_s=0.05, message=second.log()[-2000:])
    return time.monotonic() - started


@needs_kafka
def test_a_restarted_bridge_with_a_stable_instance_id_takes_its_partitions_back_at_once(topics, bridges, wait_until):
    env = child_env() | {INSTANCE_ID_ENV: f"{topics.group}-a"}
    took = restart_takes(topics, bridges, wait_until, *OWN_SETTINGS, env=env)
    print(f"static membership: restarted bridge consumed from every partition {took:.1f}s after the kill")
    assert took < 8, f"{took:.1f}s"


@needs_kafka
def test_a_restarted_bridge_without_an_instance_id_waits_only_the_short_session_timeout(topics, bridges, wait_until):
    took = restart_takes(topics, bridges, wait_until, *OWN_SETTINGS)
    print(f"dynamic membership: restarted bridge consumed from every partition {took:.1f}s after the kill")
    assert took < SESSION_TIMEOUT_MS / 1000 + 8, f"{took:.1f}s"

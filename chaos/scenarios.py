"""The faults: one function per scenario, run while its load is produced.

Each gets a Run (its stack, the private services, the sandbox, the load) and returns once the
fault is over and the load is produced; the campaign then waits for the drain and measures.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from chaos.load import Load
from chaos.measure import Ledger
from chaos.services import Services
from chaos.stack import Stack


@dataclass
class Run:
    name: str
    prefix: str
    stack: Stack
    services: Services
    sandbox: Any  # SandboxClient
    load: Load
    broker_url: str
    ledger: Ledger
    notes: list[str] = field(default_factory=list)
    # Sandbox records taken before a reset (the storm's end), added to the final count.
    saved_messages: list[dict] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Remember what the scenario did, stamped with the seconds since the load began."""
        text = f"t+{time.time() - self.load.started:.1f}s {text}" if self.load.started else text
        self.notes.append(text)
        print(f"chaos:   {text}", flush=True)

    def wait_sending(self, timeout_s: float = 5.0) -> bool:
        """Wait until APNs requests are arriving (a push worker is mid-batch); False if none came."""
        deadline = time.monotonic() + timeout_s
        before = self.sandbox.request_count("apns")
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.sandbox.request_count("apns")
            if now > before:
                return True
            before = now
        return False

    def unrouted(self) -> int:
        """Events Kafka acknowledged that have no row yet (in a bridge, the broker or a pipeline worker)."""
        state = self.ledger.state(self.prefix)
        return len(self.load.acked - state.events) if state else -1

    def unacked(self, queue: str) -> int:
        """Messages of `queue` handed to a worker and not acknowledged yet (kombu's Redis `unacked` hash)."""
        import json

        import redis

        r = redis.Redis.from_url(self.broker_url, socket_timeout=2)
        try:
            return sum(1 for raw in r.hvals("unacked") if json.loads(raw)[-1] == queue)
        except (redis.RedisError, ValueError, IndexError, TypeError):
            return 0
        finally:
            r.close()

    def broker_backlog(self) -> int:
        """Messages waiting in the broker's queues plus those handed out and not acknowledged yet."""
        import redis

        from celeryconfig import QUEUES

        r = redis.Redis.from_url(self.broker_url, socket_timeout=2)
        try:
            return sum(r.llen(q) for q in QUEUES) + r.hlen("unacked")
        finally:
            r.close()


def baseline(run: Run) -> None:
    """No fault: the yardstick for the others' drain times."""
    run.load.start()
    run.load.join()


def push_worker_kill(run: Run, kills: int = 4) -> None:
    """SIGKILL a push worker (its whole process group) mid-batch, several times.

    The first comes at 20 % of the load, the next ones 1.5 s apart (a restarted worker needs a
    few seconds to come back), into the drain after the load if need be. A kill waits up to 5 s
    for its worker to hold push tasks (unacknowledged in the broker) and is skipped, with a
    note, if it never does.
    """
    run.load.start()
    run.load.wait_progress(0.2)
    last_kill = 0.0
    for i in range(kills):
        time.sleep(max(0.0, last_kill + 1.5 - time.monotonic()))
        role = "push-low" if i % 2 == 0 else "push-high"
        queue = role.replace("-", ".")
        deadline = time.monotonic() + 5
        while run.unacked(queue) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        held, at = run.unacked(queue), run.load.progress
        if not held:
            run.note(f"no SIGKILL of {role} at {at:.0%} of the load: it held no push tasks for 5 s")
            continue
        flowing = run.wait_sending(timeout_s=0.5)
        last_kill = time.monotonic()
        run.stack.kill(role)
        run.note(f"SIGKILL {role} at {at:.0%} of the load holding {held} push tasks"
                 f"{'' if flowing else ' (no APNs request seen in flight)'}; restarted")
    run.load.join()


def pipeline_worker_kill(run: Run, kills: int = 3) -> None:
    """SIGKILL a pipeline worker while it holds route/filter/dedup messages, several times."""
    import redis

    run.load.start()
    r = redis.Redis.from_url(run.broker_url, socket_timeout=2)
    try:
        for i in range(kills):
            run.load.wait_progress((i + 1) / (kills + 1))
            deadline = time.monotonic() + 5
            while r.hlen("unacked") == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            unacked = r.hlen("unacked")
            role = "pipeline-low" if i % 2 == 0 else "pipeline-high"
            at = run.load.progress
            run.stack.kill(role)
            run.note(f"SIGKILL {role} at {at:.0%} of the load ({unacked} messages unacked in the broker); "
                     "restarted")
    finally:
        r.close()
    run.load.join()


def bridge_kill(run: Run) -> None:
    """SIGKILL the low-lane bridge mid-stream and start it again a second later."""
    run.load.start()
    run.load.wait_progress(0.4)
    at = run.load.progress
    run.stack.kill("bridge-low", restart_after_s=1.0)
    run.note(f"SIGKILL bridge-low at {at:.0%} of the load; restarted after 1 s")
    run.load.join()


def provider_storm(run: Run, share: float = 0.15) -> None:
    """APNs answers 503 to a share of requests and 429 with Retry-After to another, during the load."""
    run.load.start()
    run.load.wait_progress(0.1)
    run.sandbox.add_fault("apns", status=503, fraction=share, count=None)
    run.sandbox.add_fault("apns", status=429, retry_after=1, fraction=share, count=None)
    started = time.monotonic()
    run.note(f"storm on: 503 on {share:.0%} and 429 + Retry-After 1 s on {share:.0%} of APNs requests")
    run.load.join()
    time.sleep(2)
    # A fraction fault lasts until the sandbox resets, and a reset forgets the records: the push
    # workers are stopped (SIGSTOP) meanwhile, so no accepted request falls between the two.
    push = ["push-high", "push-low"]
    run.stack.pause(push)
    try:
        time.sleep(1.0)
        run.saved_messages.extend(run.sandbox.messages("apns"))
        faults = run.sandbox.faults()
        run.sandbox.reset()
    finally:
        run.stack.resume(push)
    hits = sum(f.get("hits", 0) for f in faults)
    run.note(f"storm off after {time.monotonic() - started:.0f} s; {hits} requests answered 503/429")


def postgres_crash(run: Run) -> None:
    """`pg_ctl stop -m immediate` mid-load, start again two seconds later."""
    run.load.start()
    run.load.wait_progress(0.4)
    at = run.load.progress
    run.services.postgres.crash()
    run.note(f"PostgreSQL stopped -m immediate at {at:.0%} of the load")
    time.sleep(2)
    run.services.postgres.restart()
    run.note("PostgreSQL started again (crash recovery)")
    run.load.join()


def redis_kill_backlog(run: Run) -> None:
    """SIGKILL Redis while the broker holds a low-lane backlog, restart it two seconds later.

    The backlog is made, not hoped for: the low lane's pipeline and push workers are stopped
    (SIGSTOP) while a burst arrives, as workers slower than the intake would leave it; the high
    lane keeps running. They resume once Redis is back.
    """
    low = ["pipeline-low", "push-low"]
    run.stack.pause(low)
    try:
        run.load.start()
        run.load.wait_progress(1.0)
        time.sleep(1.0)  # the bridges hand the last batches over
        backlog, unrouted = run.broker_backlog(), run.unrouted()
        run.services.redis.kill()
        run.note(f"SIGKILL Redis with the low lane's workers stopped, {backlog} messages in the broker "
                 f"(bridge batches), {unrouted} events without a row yet")
        time.sleep(2)
        run.services.redis.start()
        run.note(f"Redis started again from what it had on disk: {run.broker_backlog()} messages in the broker")
    finally:
        run.stack.resume(low)
    run.load.join()


def redis_restart(run: Run) -> None:
    """Graceful Redis restart (SHUTDOWN, which saves as configured; then start) while work flows."""
    run.load.start()
    run.load.wait_progress(0.4)
    at, backlog, unrouted = run.load.progress, run.broker_backlog(), run.unrouted()
    run.services.redis.shutdown()
    run.note(f"Redis SHUTDOWN at {at:.0%} of the load, {backlog} messages in the broker, "
             f"{unrouted} events without a row yet")
    time.sleep(1)
    run.services.redis.start()
    run.note(f"Redis started again: {run.broker_backlog()} messages in the broker")
    run.load.join()


def kafka_kill(run: Run) -> None:
    """SIGKILL Kafka mid-load; start it again three seconds later."""
    run.load.start()
    run.load.wait_progress(0.4)
    at = run.load.progress
    run.services.kafka.kill()
    run.note(f"SIGKILL Kafka at {at:.0%} of the load")
    time.sleep(3)
    started = time.monotonic()
    run.services.kafka.restart()
    run.note(f"Kafka answers again after {time.monotonic() - started:.0f} s")
    run.load.join()


def poison(run: Run) -> None:
    """Malformed and ~1 MB messages among the events (see Load.poison): the events must still arrive."""
    run.load.start()
    run.load.join()


# name -> (function, options of its load: burst (--burst-rate), rate_factor (of --rate), poison)
SCENARIOS: dict[str, tuple[Callable[[Run], None], dict]] = {
    "baseline": (baseline, {}),
    "push-worker-kill": (push_worker_kill, {}),
    "pipeline-worker-kill": (pipeline_worker_kill, {}),
    "bridge-kill": (bridge_kill, {}),
    "provider-storm": (provider_storm, {}),
    "postgres-crash": (postgres_crash, {}),
    "redis-kill-backlog": (redis_kill_backlog, {"burst": True}),
    "redis-restart": (redis_restart, {}),
    "kafka-kill": (kafka_kill, {}),
    "poison": (poison, {"poison": True}),
}

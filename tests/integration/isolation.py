"""Stacks of their own inside one test run: workers on a broker key prefix nobody else reads."""
from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager

from sandbox.devstack import free_port
from notifier.store.redis_conn import broker_redis
from tasks.app import app


@contextmanager
def isolated_broker(name: str):
    """A broker key prefix (NOTIFIER_BROKER_KEY_PREFIX) of this test's own; its keys are removed after."""
    prefix = f"{name}-{os.getpid()}:"
    try:
        yield prefix
    finally:
        r = broker_redis()
        for key in r.scan_iter(match=prefix + "*"):
            r.delete(key)


def produce(prefix: str, task, *args) -> None:
    """Send a task to the workers of one isolated broker prefix."""
    with app.connection_for_write(transport_options={"global_keyprefix": prefix}) as conn:
        task.apply_async(args, connection=conn)


class TcpGate:
    """A TCP forwarder (to PostgreSQL, say) that can be closed and opened: an outage on demand."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port, self._listener, self._threading = target, free_port(), None, threading
        self._open: set[socket.socket] = set()

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and cut the ones open (pooled connections die as in a real outage)."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in its thread
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for s in list(self._open):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                self._open.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

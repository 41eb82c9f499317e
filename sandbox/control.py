"""Serve the sandbox's control API: plain HTTP/1.1 and JSON, for tests and developers.

    GET  /_sandbox/health                           endpoints of every provider
    GET  /_sandbox/messages?provider=&target=       accepted requests, oldest first
    GET  /_sandbox/requests/count?provider=         requests seen, accepted or not
    GET  /_sandbox/connections?provider=            connections accepted / open
    GET  /_sandbox/faults                           faults still armed
    POST /_sandbox/faults                           arm a fault (see state.fault_from_json)
    POST /_sandbox/reset                            forget records, counters and faults
    GET|POST /_sandbox/receipts                     simulate delivery receipts (see receipts.py)

It runs on the same event loop as the provider servers, so it reads their state
without locks.

It can arm faults and mint signed provider webhooks, so it listens on loopback unless
told otherwise, and beyond loopback only with a token (``Authorization: Bearer <token>``
on every request but health; sandbox.app refuses to start without one).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox.http1 import read_headers
from sandbox.state import SandboxState, fault_from_json

log = logging.getLogger(__name__)

_MAX_BODY = 1024 * 1024
_REASONS = {
    200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 502: "Bad Gateway",
}  # fmt: skip


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    """HTTP/1.1 JSON API over the sandbox state."""

    def __init__(self, state: SandboxState, token: str = "") -> None:
        self.state = state
        self.token = token
        self._writers: set[asyncio.StreamWriter] = set()
        # More endpoints by path: handler(method, body) -> (status, payload), or an awaitable of it.
        self.routes: dict[str, Callable[[str, bytes], tuple[int, Any] | Awaitable[tuple[int, Any]]]] = {}
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); return the port."""
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line.strip():
                    break
                headers = await read_headers(reader)
                try:
                    method, target, version = request_line.decode("latin-1").split()
                    length = int(headers.get("content-length", "0"))
                    if length > _MAX_BODY:
                        raise HttpError(413, "body too large")
                    body = await reader.readexactly(length) if length else b""
                    self._authorize(target, headers)
                    result = self.route(method, target, body)
                    status, payload = await result if inspect.isawaitable(result) else result
                except HttpError as exc:
                    status, payload = exc.status, {"error": str(exc)}
                except ValueError as exc:
                    status, payload = 400, {"error": str(exc)}
                keep_alive = headers.get("connection", "").lower() != "close" and request_line.rstrip().endswith(b"1.1")
                data = json.dumps(payload).encode()
                writer.write(
                    (
                        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                        "Content-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\n"
                        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
                    ).encode()
                    + data
                )
                await writer.drain()
                if not keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Shutting down with the connection open: a handler that ends cancelled makes
            # asyncio's stream callback log a traceback, so it ends here, quietly.
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _authorize(self, target: str, headers: dict[str, str]) -> None:
        if not self.token or urlsplit(target).path.rstrip("/") == "/_sandbox/health":
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise HttpError(401, "authorization: send Authorization: Bearer <NOTIFIER_SANDBOX_CONTROL_TOKEN>")

    def route(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """Answer one control request: (status, JSON-able payload)."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        state = self.state
        if path == "/_sandbox/health":
            self._method(method, "GET")
            return 200, {"status": "ok", "endpoints": dict(state.endpoints)}
        if path == "/_sandbox/messages":
            self._method(method, "GET")
            provider = query.get("provider")
            if provider is not None:
                self._provider(provider)
            return 200, state.messages(provider, query.get("target"))
        if path == "/_sandbox/requests/count":
            self._method(method, "GET")
            provider = self._provider(query.get("provider"))
            return 200, {"provider": provider, "count": state.request_counts[provider]}
        if path == "/_sandbox/connections":
            self._method(method, "GET")
            provider = self._provider(query.get("provider"))
            return 200, {"provider": provider, **state.connections(provider)}
        if path == "/_sandbox/faults":
            if method == "GET":
                return 200, [f.public() for faults in state.faults.values() for f in faults]
            self._method(method, "POST")
            try:
                spec = json.loads(body or b"null")
            except ValueError as exc:
                raise HttpError(400, f"body: not JSON ({exc})") from None
            fault = fault_from_json(spec, state.providers)
            state.add_fault(fault)
            log.debug("fault armed: %s", fault.public())
            return 201, fault.public()
        if path == "/_sandbox/reset":
            self._method(method, "POST")
            state.reset()
            return 200, {"status": "reset"}
        if path in self.routes:
            return self.routes[path](method, body)
        raise HttpError(404, f"{url.path}: no such endpoint")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, f"method {method} not allowed, use {allowed}")

    def _provider(self, provider: str | None) -> str:
        if provider not in self.state.providers:
            raise HttpError(400, f"provider: expected one of {sorted(self.state.providers)}")
        return provider

"""Serve HTTP/1.1 (keep-alive, Content-Length or chunked bodies) on asyncio, routing each request to a handler.

The server knows nothing about any provider, like ``h2server``: the SendGrid and
Twilio sandboxes are handlers. A ``Reply`` also carries the faults the sandbox
injects at this level: answer late, or drop the connection without answering.
"""

from __future__ import annotations

import asyncio
import http
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.h2server import ServerStats

log = logging.getLogger(__name__)

_MAX_HEADER_LINES = 100


async def read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """Read header lines up to the blank line; names lower-cased (shared with the control API)."""
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers
_MAX_LINE = 64 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes


@dataclass(slots=True)
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay_s: float = 0.0
    drop: bool = False  # close the connection instead of answering
    close: bool = False  # answer, then close the connection


Handler = Callable[[Request], Reply]


class BodyTooLarge(Exception):
    pass


class Http1Server:
    """Accept connections (TLS when given a context), parse requests, write the handler's replies."""

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None,
                 max_body: int = 32 * 1024 * 1024, too_large: Callable[[], Reply] | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_body = max_body
        self.too_large = too_large or (lambda: Reply(413, [("Content-Type", "text/plain")], b"payload too large"))
        self.stats = ServerStats()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); return the port."""
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self.ssl_context, reuse_address=True, limit=_MAX_LINE
        )
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def reset_stats(self) -> None:
        self.stats.accepted = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        self.stats.open += 1
        self._writers.add(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line.strip():
                    break
                parts = request_line.decode("latin-1").split()
                headers = await read_headers(reader)
                if len(parts) != 3:
                    await self._write(writer, Reply(400, close=True), keep_alive=False)
                    break
                method, target, version = parts
                try:
                    body = await self._body(reader, headers)
                except BodyTooLarge:
                    await self._write(writer, self.too_large(), keep_alive=False)
                    break
                path, _, query = target.partition("?")
                reply = self.handler(Request(method, path, query, headers, body))
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                if reply.drop:
                    writer.transport.abort()
                    break
                keep_alive = (version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                              and not reply.close)
                await self._write(writer, reply, keep_alive)
                if not keep_alive:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # Shutting down with the connection open: asyncio's stream callback would log a
            # traceback for a handler that ends cancelled, so it ends here, quietly.
            pass
        finally:
            self.stats.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > self.max_body:
                    raise BodyTooLarge
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = int(headers.get("content-length", "0"))
        if length > self.max_body:
            raise BodyTooLarge
        return await reader.readexactly(length) if length else b""

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> None:
        try:
            phrase = http.HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Unknown"
        head = [f"HTTP/1.1 {reply.status} {phrase}"]
        head += [f"{name}: {value}" for name, value in reply.headers]
        head += [f"Content-Length: {len(reply.body)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
        await writer.drain()

"""Serve HTTP/2 over TLS (ALPN "h2") with the h2 library, routing each request to a handler.

The server knows nothing about any provider. A handler takes a ``Request`` and
returns ``(status, headers, body)`` or a ``Reply``; a ``Reply`` also carries the
HTTP/2-level faults the sandbox injects: answer late, drop the connection,
refuse the stream, or send GOAWAY after a number of streams. A handler may be a
coroutine function when it must await something; a plain function is the fast
path (no task per request), which matters because benchmarks run through here.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack
from hyperframe.frame import GoAwayFrame, SettingsFrame

log = logging.getLogger(__name__)

# One WINDOW_UPDATE up front so request bodies never wait on the connection window.
_CONNECTION_WINDOW = 16 * 1024 * 1024
# h2 itself would answer a stream over SETTINGS_MAX_CONCURRENT_STREAMS with a connection
# error (GOAWAY PROTOCOL_ERROR), losing every stream on the connection. RFC 9113 §5.1.2
# makes it a stream error, so h2 is told no limit and the connection enforces the one it
# advertised itself, refusing only the streams over it (RST_STREAM REFUSED_STREAM: never
# processed, safe for the client to retry).
_UNENFORCED_STREAM_LIMIT = 2**31 - 1
# After GOAWAY, how long streams up to last-stream-id may take to finish arriving.
_GOAWAY_GRACE_S = 30.0

# Header validation in h2 is pure Python and costs more than the rest of a request;
# the sandbox's clients are libcurl/nghttp2 and our own replies are well-formed.
_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding="utf-8",
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def _memoize_huffman_decoding(max_entries: int = 4096) -> None:
    """Remember decoded HPACK strings: a client's provider token arrives identical on every request.

    nghttp2 sends ``authorization`` as "never indexed", so the same JWT is
    Huffman-coded into every request, and hpack's pure-Python decoder was the
    largest single cost of the sandbox's request handling.
    """
    decode = hpack.hpack.decode_huffman
    if getattr(decode, "memoized", False):
        return
    cache: dict[bytes, bytes] = {}

    def decode_huffman(encoded: bytes | memoryview) -> bytes:
        key = bytes(encoded)
        decoded = cache.get(key)
        if decoded is None:
            decoded = decode(key)
            if len(cache) >= max_entries:
                cache.clear()
            cache[key] = decoded
        return decoded

    decode_huffman.memoized = True  # type: ignore[attr-defined]
    hpack.hpack.decode_huffman = decode_huffman


_memoize_huffman_decoding()

_RequestReceived = h2.events.RequestReceived
_DataReceived = h2.events.DataReceived
_StreamEnded = h2.events.StreamEnded
_StreamReset = h2.events.StreamReset
_ConnectionTerminated = h2.events.ConnectionTerminated
_SettingsAcknowledged = h2.events.SettingsAcknowledged


@dataclass(slots=True)
class ConnectionInfo:
    """Identify one client connection; handlers may read it."""

    id: int
    peer: str
    streams_unlocked: bool = False
    streams_refused: int = 0  # over the advertised limit: RST_STREAM(REFUSED_STREAM)


@dataclass(slots=True)
class Request:
    """One complete HTTP/2 request."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names, pseudo-headers removed
    body: bytes
    stream_id: int
    connection: ConnectionInfo
    duplicate_headers: bool = False


@dataclass(slots=True)
class Reply:
    """A response plus the connection-level behaviour that goes with it."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    delay_s: float = 0.0  # answer this much later
    drop: bool = False  # close the connection instead of answering, with every stream still open on it
    refuse: bool = False  # RST_STREAM(REFUSED_STREAM): not processed, the client may retry it
    # Process this many streams, this one first, then GOAWAY and close; 0: not even this one.
    goaway_after: int | None = None
    unlock_streams: bool = False  # raise the connection's stream limit to the server's maximum


ReplyLike = Reply | tuple[int, Sequence[tuple[str, str]], bytes]
Handler = Callable[[Request], ReplyLike | Awaitable[ReplyLike]]


@dataclass(slots=True)
class ServerStats:
    accepted: int = 0
    open: int = 0


class H2Server:
    """Accept TLS connections, speak HTTP/2 on them, hand each request to ``handler``."""

    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext,
        max_concurrent_streams: int = 1000,
        initial_max_concurrent_streams: int | None = None,
        goaway_data: bytes = b"",
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_max_concurrent_streams = initial_max_concurrent_streams or max_concurrent_streams
        self.goaway_data = goaway_data
        self.stats = ServerStats()
        self._ids = itertools.count(1)
        self._connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); return the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, ssl=self.ssl_context, reuse_address=True
        )
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def reset_stats(self) -> None:
        self.stats.accepted = 0


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2 state machine, pending streams and injected faults."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo(next(server._ids), "")
        self.h2 = h2.connection.H2Connection(config=_H2_CONFIG)
        self.streams: dict[int, tuple[list, list[bytes]]] = {}  # received, not yet complete
        self.waiting: set[int] = set()  # handed to the handler, not yet answered
        self.max_processed = 0
        self.goaway_budget: int | None = None
        self.last_stream_id: int | None = None  # set once GOAWAY is sent
        self.closed = False
        # The stream limit in force, and the SETTINGS frames the client has yet to acknowledge, in
        # order: None for h2's own opening SETTINGS, else the MAX_CONCURRENT_STREAMS we advertised.
        # A lowered limit applies once acknowledged (a client may have opened streams before it
        # saw it); a raised one at once.
        self.stream_limit = _UNENFORCED_STREAM_LIMIT
        self.advertised_limit = _UNENFORCED_STREAM_LIMIT
        self.unacked_limits: deque[int | None] = deque()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            # Like APNs: HTTP/2 or nothing.
            self.closed = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.info.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        server = self.server
        server.stats.accepted += 1
        server.stats.open += 1
        server._connections.add(self)

        h2conn = self.h2
        h2conn.local_settings = h2.settings.Settings(
            client=False,
            # No MAX_CONCURRENT_STREAMS: h2 then enforces none (_UNENFORCED_STREAM_LIMIT).
            initial_values={h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536},
        )
        h2conn.initiate_connection()
        self.unacked_limits.append(None)
        h2conn.increment_flow_control_window(_CONNECTION_WINDOW)
        self._flush()
        self._advertise_stream_limit(server.initial_max_concurrent_streams)
        self.info.streams_unlocked = server.initial_max_concurrent_streams >= server.max_concurrent_streams

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._forget()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        h2conn = self.h2
        try:
            events = h2conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("connection %d: protocol error: %s", self.info.id, exc)
            self._flush()
            self.transport.close()
            return
        for event in events:
            kind = event.__class__
            if kind is _RequestReceived:
                if len(self.streams) + len(self.waiting) >= self.stream_limit:
                    self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    self.info.streams_refused += 1
                    continue
                self.streams[event.stream_id] = (event.headers, [])
            elif kind is _DataReceived:
                entry = self.streams.get(event.stream_id)
                if entry is not None:
                    entry[1].append(event.data)
                if event.flow_controlled_length:
                    h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is _StreamEnded:
                self._dispatch(event.stream_id)
                if self.closed:
                    return
                # Each answer leaves as soon as it is ready, as APNs answers each stream on its own;
                # held until the whole read chunk was processed, a batch's answers all came at once.
                self._flush()
            elif kind is _StreamReset:
                self.streams.pop(event.stream_id, None)
                self.waiting.discard(event.stream_id)
            elif kind is _SettingsAcknowledged:
                if self.unacked_limits:
                    limit = self.unacked_limits.popleft()
                    if limit is not None:
                        # A raise sent since then is already in force.
                        self.stream_limit = max(limit, self.advertised_limit)
            elif kind is _ConnectionTerminated:
                self._flush()
                self.transport.close()
                return
        self._flush()
        if self.last_stream_id is not None:
            self._close_if_done()

    # requests

    def _dispatch(self, stream_id: int) -> None:
        entry = self.streams.pop(stream_id, None)
        if entry is None:
            return
        if self.last_stream_id is not None and stream_id > self.last_stream_id:
            return  # past our GOAWAY: never processed, the client retries it elsewhere
        raw_headers, chunks = entry
        method = path = ""
        headers: dict[str, str] = {}
        duplicate = False
        for name, value in raw_headers:
            if name[0] == ":":
                if name == ":method":
                    method = value
                elif name == ":path":
                    path = value
            elif name in headers:
                duplicate = True
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = Request(method, path, headers, body, stream_id, self.info, duplicate)
        self.waiting.add(stream_id)
        try:
            result = self.server.handler(request)
        except Exception:
            log.exception("sandbox handler failed")
            result = Reply(500)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t, sid=stream_id: self._on_handler_done(sid, t))
        else:
            self._reply(stream_id, result)

    def _on_handler_done(self, stream_id: int, task: asyncio.Future) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("sandbox handler failed", exc_info=exc)
            result: ReplyLike = Reply(500)
        else:
            result = task.result()
        self._reply(stream_id, result)
        self._flush()
        self._close_if_done()

    def _reply(self, stream_id: int, result: ReplyLike) -> None:
        if self.closed:
            return
        if result.__class__ is tuple:
            status, headers, body = result  # type: ignore[misc]
            self._send(stream_id, status, headers, body)
            self._count_toward_goaway(stream_id)
            return
        reply: Reply = result  # type: ignore[assignment]
        if reply.delay_s > 0 and (reply.drop or reply.refuse):
            self.loop.call_later(reply.delay_s, self._reply_late, stream_id, reply)
            return
        if reply.drop:
            self.drop()
            return
        if reply.refuse:
            self.waiting.discard(stream_id)
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if reply.goaway_after == 0 and self.last_stream_id is None:
            self.waiting.discard(stream_id)
            self._send_goaway()
            return
        if reply.unlock_streams and not self.info.streams_unlocked:
            self.info.streams_unlocked = True
            self._flush()
            self._advertise_stream_limit(self.server.max_concurrent_streams)
        if reply.goaway_after is not None and self.goaway_budget is None:
            self.goaway_budget = reply.goaway_after
        if reply.delay_s > 0:
            self.loop.call_later(
                reply.delay_s, self._send_late, stream_id, reply.status, reply.headers, reply.body
            )
        else:
            self._send(stream_id, reply.status, reply.headers, reply.body)
        self._count_toward_goaway(stream_id)

    def _reply_late(self, stream_id: int, reply: Reply) -> None:
        reply.delay_s = 0.0
        self._reply(stream_id, reply)
        if not self.closed:
            self._flush()

    def _count_toward_goaway(self, stream_id: int) -> None:
        if stream_id > self.max_processed:
            self.max_processed = stream_id
        if self.goaway_budget is not None and self.last_stream_id is None:
            self.goaway_budget -= 1
            if self.goaway_budget <= 0:
                self._send_goaway()

    def _send(self, stream_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self.waiting.discard(stream_id)
        response = [(":status", str(status)), *headers, ("content-length", str(len(body)))]
        try:
            self.h2.send_headers(stream_id, response, end_stream=not body)
            if body:
                self.h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.StreamClosedError:
            pass  # the client gave up on this stream (timeout, cancel)
        except h2.exceptions.FlowControlError:
            # Replies are small; a client window this tight is a client bug worth seeing.
            log.warning("connection %d: reply larger than the client's window", self.info.id)
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def _send_late(self, stream_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        if self.closed:
            return
        self._send(stream_id, status, headers, body)
        self._flush()
        self._close_if_done()

    def _advertise_stream_limit(self, limit: int) -> None:
        """Send SETTINGS_MAX_CONCURRENT_STREAMS ourselves (h2 is told no limit: see _UNENFORCED_STREAM_LIMIT)."""
        frame = SettingsFrame(0, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        self.transport.write(frame.serialize())
        self.unacked_limits.append(limit)
        self.advertised_limit = limit
        if limit > self.stream_limit:
            self.stream_limit = limit

    # connection-level faults

    def _send_goaway(self) -> None:
        """Tell the client the last stream we process; answer those, ignore later ones, then close."""
        self.last_stream_id = self.max_processed
        self._flush()
        # Written around h2 on purpose: h2 would refuse to send the replies still owed
        # for streams up to last_stream_id once it has sent GOAWAY itself.
        frame = GoAwayFrame(0, last_stream_id=self.last_stream_id, additional_data=self.server.goaway_data)
        self.transport.write(frame.serialize())
        self.loop.call_later(_GOAWAY_GRACE_S, self._give_up_after_goaway)
        self._close_if_done()

    def _give_up_after_goaway(self) -> None:
        if not self.closed:
            self.drop()

    def _close_if_done(self) -> None:
        last = self.last_stream_id
        if last is None or self.closed:
            return
        if any(sid <= last for sid in self.waiting) or any(sid <= last for sid in self.streams):
            return
        self.closed = True
        self.transport.close()

    def drop(self) -> None:
        """Close the connection now, unanswered streams and all; replies already made still go out."""
        self._flush()
        self.closed = True
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        connections = self.server._connections
        if self in connections:
            connections.discard(self)
            self.server.stats.open -= 1

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)


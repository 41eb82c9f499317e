"""Send batches of HTTP/2 requests over one persistent, multiplexed TLS connection per origin.

The push hot path (APNs, FCM): pycurl's multi interface over libcurl + nghttp2,
the cheapest client CPU per request of the Python options measured (about 450 µs with
httpx, 260 µs with curl_cffi, 75 µs with pycurl; docs/scaling.md has this one's figure in the
whole send, ``bench/transport_bench.py`` measures it). One ``Http2Transport`` per process or
thread: it is not thread-safe. A transport inherited across a fork starts afresh
in the child and never touches the parent's connection.

When the server stops a connection (measured against libcurl 8.23 + nghttp2 1.70):

- GOAWAY: nghttp2 closes the streams above the GOAWAY's last-stream-id with
  REFUSED_STREAM, exactly as for an RST_STREAM(REFUSED_STREAM). libcurl marks
  such a transfer ``refused_stream`` and reruns it itself on a new connection, up
  to 5 times (lib/http2.c ``http2_handle_stream_close``, lib/transfer.c
  ``Curl_retry_request``, CONN_MAX_RETRIES); we get ordinary responses. Streams
  at or below last-stream-id are answered on the old connection.
- The connection dies before any response byte: libcurl reruns the request
  itself only if the connection was a reused one *and* it surfaced as
  CURLE_RECV_ERROR. Otherwise it reports CURLE_SEND_ERROR, CURLE_RECV_ERROR,
  CURLE_GOT_NOTHING or CURLE_HTTP2(_STREAM); if no response byte had arrived and
  libcurl had not already gone to a second connection for it (NUM_CONNECTS <= 1),
  we resend it once, at once, on a new connection.
- Anything else (timeout, response cut short, TLS or connect failure) comes back
  with ``status`` 0 and ``error`` set: the server may have processed it, so
  retrying is the caller's decision.

One request that cannot be set up never stops the others: a URL or header that is
not printable ASCII (CR/LF would inject a header; libcurl refuses non-ASCII with an
exception; a ``#`` fragment is silently dropped, so ``<token>#x`` would reach another
device), or a ``setopt`` that raises, gives that request a response with ``status`` 0
and ``unsendable`` set, and is never sent: resending the same request cannot help.

Device tokens travel in URLs: nothing here logs a URL, and error texts never quote
a URL, a header or the exception that refused one (its repr carries the URL).
"""

from __future__ import annotations

import logging
import os
import select
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import ceil
from time import monotonic

import pycurl

log = logging.getLogger(__name__)

_CURLE_HTTP2_STREAM = 92  # missing from pycurl's constants
# How libcurl reports a connection that died under a transfer.
_CONNECTION_DIED = frozenset(
    {pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING, pycurl.E_HTTP2, _CURLE_HTTP2_STREAM}
)
# The first words of HttpResponse.error: the kind of failure, for callers and logs.
_ERROR_KIND = {
    pycurl.E_OPERATION_TIMEDOUT: "timeout",
    pycurl.E_COULDNT_CONNECT: "connect failed",
    pycurl.E_COULDNT_RESOLVE_HOST: "name not resolved",
    pycurl.E_SSL_CONNECT_ERROR: "TLS handshake failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "TLS verification failed",
    pycurl.E_PARTIAL_FILE: "response cut short",
    pycurl.E_SEND_ERROR: "connection lost during the response",
    pycurl.E_RECV_ERROR: "connection lost during the response",
    pycurl.E_GOT_NOTHING: "connection lost during the response",
    pycurl.E_HTTP2: "HTTP/2 error",
    _CURLE_HTTP2_STREAM: "HTTP/2 stream error",
}
_RESPONSE_CODE = pycurl.RESPONSE_CODE
_HEADER_SIZE = pycurl.HEADER_SIZE
_NUM_CONNECTS = pycurl.NUM_CONNECTS
_POLL_MASK = {
    pycurl.POLL_IN: select.POLLIN,
    pycurl.POLL_OUT: select.POLLOUT,
    pycurl.POLL_INOUT: select.POLLIN | select.POLLOUT,
}
# Longest we block in poll() while libcurl has no timer due.
_MAX_WAIT_MS = 1000
# Handles inherited across a fork: kept referenced so that garbage collection in the
# child never runs curl cleanup on, and so writes to, the parent's connections.
_INHERITED: list[object] = []


@dataclass(slots=True)
class HttpRequest:
    method: str  # "POST"
    url: str  # full URL, e.g. https://127.0.0.1:8791/3/device/<token>
    headers: dict[str, str]
    body: bytes
    tag: object = None  # the caller's handle, passed back untouched


@dataclass(slots=True)
class HttpResponse:
    request: HttpRequest
    status: int  # 0 when no HTTP response arrived (transport error)
    headers: dict[str, str]  # lower-cased names
    body: bytes
    error: str | None  # transport error text; None when an HTTP response arrived
    elapsed_s: float
    # True when the request could not be set up (bad URL, header or body) and was never
    # sent: resending the same request cannot help.
    unsendable: bool = False


class _Unsendable(Exception):
    """A request that cannot be set up; the text names what, never the value."""


class _Round:
    """One send_all call's requests: which are waiting, in flight (their handles) and answered."""

    def __init__(self, requests: Sequence[HttpRequest], on_response: Callable[[HttpResponse], None] | None) -> None:
        self.requests = requests
        self.on_response = on_response
        self.count = len(requests)
        self.results: list[HttpResponse | None] = [None] * self.count
        self.handles: list[pycurl.Curl | None] = [None] * self.count  # in the multi now
        self.started = monotonic()
        self.resent = bytearray(self.count)
        self.waiting = deque(range(self.count))
        self.in_flight = 0
        self.done = 0
        self.checked: set[str] = set()  # header names and values found good (see _malformed)

    def finished(self, multi: pycurl.CurlMulti, curl: pycurl.Curl) -> int:
        """Take a transfer libcurl has finished out of the multi; return its request's index."""
        multi.remove_handle(curl)
        self.in_flight -= 1
        index = curl.index
        self.handles[index] = None
        return index

    def settle(self, index: int, response: HttpResponse) -> None:
        """Record a request's final response and report it."""
        self.results[index] = response
        self.done += 1
        if self.on_response is not None:
            _call(self.on_response, response)


class Http2Transport:
    """Multiplex batches of requests over one persistent HTTP/2 connection per origin.

    TLS verification is always on; ``ca_file`` adds the CA bundle to trust
    instead of the system's (the sandbox's certificate, in development).
    ``timeout_s`` bounds each request from the start of ``send_all``, resend
    included; ``max_in_flight`` bounds the streams open at once.
    """

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_in_flight: int = 1000,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight: expected at least 1")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeout_s, connect_timeout_s: expected more than 0")
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ValueError(f"ca_file: no such file: {ca_file}")
        self.ca_file = None if ca_file is None else str(ca_file)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_in_flight = max_in_flight
        self._closed = False
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._idle: list[pycurl.Curl] = []
        self._poll = select.poll()
        self._watched: dict[int, int] = {}  # fd → poll mask libcurl asked for
        self._timer_due: float | None = None  # when libcurl wants socket_action(TIMEOUT)
        multi = self._multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        # One connection per origin: a transfer waits for a free stream rather than
        # opening a second connection (APNs starts a connection at one stream). The
        # price: after a GOAWAY, the streams libcurl reruns wait until the old
        # connection has answered its last streams and closed.
        multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, 1)
        multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, self.max_in_flight)
        # The socket API, not curl_multi_fdset + select(): no FD_SETSIZE ceiling.
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)

    def send_all(
        self,
        requests: Sequence[HttpRequest],
        on_response: Callable[[HttpResponse], None] | None = None,
    ) -> list[HttpResponse]:
        """Send every request; return their responses in the same order once all completed or timed out.

        ``on_response`` is called once per request with its final response (after the
        transport's own resend, if any), as soon as that response is complete and while
        the other requests are still in flight, in completion order, in this thread. It
        must be cheap: the other streams wait while it runs. An exception from it is
        logged (its type only) and ignored, so a failing callback never strands the
        requests still in flight; a BaseException (KeyboardInterrupt) still propagates.
        """
        if self._closed:
            raise RuntimeError("Http2Transport is closed")
        if self._pid != os.getpid():
            _INHERITED.extend((self._multi, self._idle))
            self._start()
        if not requests:
            return []
        batch = _Round(requests, on_response)
        try:
            while batch.done < batch.count:
                if batch.waiting and batch.in_flight < self.max_in_flight:
                    self._admit(batch)
                    if batch.done == batch.count:
                        break  # the last ones were unsendable: nothing to wait for
                self._wait_for_sockets()
                self._collect(batch)
        finally:
            if batch.done < batch.count:
                # Interrupted (a signal, a soft time limit): leave the multi clean for the next call.
                for curl in batch.handles:
                    if curl is not None:
                        try:
                            self._multi.remove_handle(curl)
                        except pycurl.error:
                            pass  # interrupted before it was added
                        self._release(curl)
        return batch.results  # type: ignore[return-value]

    def send_each(self, requests: Sequence[HttpRequest], on_response: Callable[[HttpResponse], None]) -> None:
        """send_all, with ``on_response`` settling every request exactly once: a call that raised
        (send_all logs and ignores it) is made again with the response send_all returns."""
        if not requests:
            return
        unsettled = {id(r) for r in requests}

        def answered(resp: HttpResponse) -> None:
            on_response(resp)
            unsettled.discard(id(resp.request))

        for resp in self.send_all(requests, answered):
            if id(resp.request) in unsettled:
                unsettled.discard(id(resp.request))
                on_response(resp)

    def _admit(self, batch: _Round) -> None:
        """Add waiting requests to the multi, up to max_in_flight; settle at once those that cannot be sent."""
        budget_s = self.timeout_s - (monotonic() - batch.started)
        while batch.waiting and batch.in_flight < self.max_in_flight:
            index = batch.waiting.popleft()
            request = batch.requests[index]
            try:
                curl = self._prepare(index, request, budget_s, batch.checked)
            except _Unsendable as exc:
                batch.settle(index, HttpResponse(request, 0, {}, b"", f"request not sent: {exc}", 0.0, True))
                continue
            batch.handles[index] = curl
            self._multi.add_handle(curl)
            batch.in_flight += 1

    def _wait_for_sockets(self) -> None:
        """Wait for socket activity or libcurl's next timer, and hand what happened to libcurl."""
        socket_action = self._multi.socket_action
        due = self._timer_due
        if due is None:
            wait_ms = _MAX_WAIT_MS
        else:
            left_s = due - monotonic()
            wait_ms = 0 if left_s <= 0 else min(ceil(left_s * 1000), _MAX_WAIT_MS)
        for fd, events in self._poll.poll(wait_ms):
            socket_action(fd, _curl_events(events))
        due = self._timer_due
        if due is not None and due <= monotonic():
            self._timer_due = None
            socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _collect(self, batch: _Round) -> None:
        """Settle every transfer libcurl has finished; queue once more a request its connection lost unanswered."""
        multi = self._multi
        queued = 1
        while queued:
            queued, succeeded, failed = multi.info_read()
            if not (succeeded or failed):
                break
            elapsed_s = monotonic() - batch.started
            for curl in succeeded:
                index = batch.finished(multi, curl)
                response = HttpResponse(
                    batch.requests[index],
                    curl.getinfo(_RESPONSE_CODE),
                    _parse_headers(curl.header_lines),
                    b"".join(curl.body_chunks),
                    None,
                    elapsed_s,
                )
                self._release(curl)
                batch.settle(index, response)
            for curl, code, message in failed:
                index = batch.finished(multi, curl)
                died_unanswered = code in _CONNECTION_DIED and curl.getinfo(_HEADER_SIZE) == 0
                resend = (
                    died_unanswered
                    and not batch.resent[index]
                    and elapsed_s < self.timeout_s
                    and curl.getinfo(_NUM_CONNECTS) <= 1
                )
                self._release(curl)
                if resend:
                    # The server cannot have answered it, and libcurl did not
                    # go to a second connection for it: resend once, now.
                    batch.resent[index] = 1
                    batch.waiting.append(index)
                    log.debug("resending a request after: %s (curl %d)", message, code)
                    continue
                kind = "connection lost" if died_unanswered else _ERROR_KIND.get(code, "transport error")
                batch.settle(index, HttpResponse(
                    batch.requests[index], 0, {}, b"", f"{kind}: {message or 'no detail'} (curl {code})", elapsed_s
                ))

    def close(self) -> None:
        """Close the connections and free the curl handles."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            _INHERITED.extend((self._multi, self._idle))
            return
        self._multi.close()
        for curl in self._idle:
            curl.close()
        self._idle.clear()
        for fd in self._watched:
            self._poll.unregister(fd)
        self._watched.clear()

    def __enter__(self) -> Http2Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        watched = self._watched
        if what == pycurl.POLL_REMOVE:
            if watched.pop(fd, None) is not None:
                self._poll.unregister(fd)
            return
        mask = _POLL_MASK.get(what, 0)
        if fd in watched:
            self._poll.modify(fd, mask)
        else:
            self._poll.register(fd, mask)
        watched[fd] = mask

    def _on_timer(self, timeout_ms: int) -> None:
        self._timer_due = None if timeout_ms < 0 else monotonic() + timeout_ms / 1000

    def _prepare(self, index: int, request: HttpRequest, budget_s: float, checked: set[str]) -> pycurl.Curl:
        problem = _malformed(request, checked)
        if problem is not None:
            raise _Unsendable(problem)
        curl = self._idle.pop() if self._idle else pycurl.Curl()
        try:
            return self._set_up(curl, index, request, budget_s)
        except (ValueError, TypeError, pycurl.error) as exc:
            # Back to the idle list (reset at its next use); the exception itself is
            # dropped: its text or repr may carry the URL, and so a device token.
            curl.header_lines = curl.body_chunks = None
            self._idle.append(curl)
            raise _Unsendable(f"the request could not be set up ({type(exc).__name__})") from None

    def _set_up(self, curl: pycurl.Curl, index: int, request: HttpRequest, budget_s: float) -> pycurl.Curl:
        curl.reset()
        setopt = curl.setopt
        setopt(pycurl.URL, request.url)
        # Offer only h2 in ALPN: APNs speaks nothing else, and a silent fallback to
        # HTTP/1.1 would lose multiplexing.
        setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
        setopt(pycurl.PIPEWAIT, 1)
        setopt(pycurl.NOSIGNAL, 1)
        if self.ca_file is not None:
            setopt(pycurl.CAINFO, self.ca_file)
        setopt(pycurl.CONNECTTIMEOUT_MS, int(self.connect_timeout_s * 1000))
        setopt(pycurl.TIMEOUT_MS, max(1, int(budget_s * 1000)))
        setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in request.headers.items()])
        method = request.method
        if method == "POST":
            setopt(pycurl.POSTFIELDS, request.body)
        elif method != "GET":
            setopt(pycurl.CUSTOMREQUEST, method)
            if request.body:
                setopt(pycurl.POSTFIELDS, request.body)
        curl.index = index
        curl.header_lines = header_lines = []
        curl.body_chunks = body_chunks = []
        setopt(pycurl.HEADERFUNCTION, header_lines.append)
        setopt(pycurl.WRITEFUNCTION, body_chunks.append)
        return curl

    def _release(self, curl: pycurl.Curl) -> None:
        curl.header_lines = curl.body_chunks = None
        self._idle.append(curl)


def _call(on_response: Callable[[HttpResponse], None], response: HttpResponse) -> None:
    try:
        on_response(response)
    except Exception as exc:  # noqa: BLE001 - documented in send_all: logged, never strands the batch
        log.error("on_response callback raised %s; the batch goes on", type(exc).__name__)


def _printable_ascii(text: object) -> bool:
    return isinstance(text, str) and text.isascii() and text.isprintable()


def _malformed(request: HttpRequest, checked: set[str]) -> str | None:
    """Say why a request must not be sent as it is, or None; never quotes the values.

    ``checked`` holds the header names and values already found good in this batch: the
    provider token and the constant headers are the same objects on every request, so
    each is scanned once per batch, not once per request (the hot path).
    """
    url = request.url
    if not _printable_ascii(url) or " " in url or "#" in url:
        return "the URL is not printable ASCII without spaces and '#'"
    for name, value in request.headers.items():
        if type(name) is not str or name not in checked:
            if not _printable_ascii(name) or ":" in name or " " in name or not name:
                return "a header name is not an HTTP token"
            checked.add(name)
        if type(value) is not str or value not in checked:
            if not _printable_ascii(value):
                return f"header {name} is not printable ASCII"
            checked.add(value)
    if not isinstance(request.body, bytes):
        return "the body is not bytes"
    return None


def _curl_events(events: int) -> int:
    flags = 0
    if events & select.POLLIN:
        flags |= pycurl.CSELECT_IN
    if events & select.POLLOUT:
        flags |= pycurl.CSELECT_OUT
    if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
        flags |= pycurl.CSELECT_ERR
    return flags


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        elif line.startswith(b"HTTP/"):
            headers.clear()  # an interim (1xx) response came first; keep the final one's
    return headers

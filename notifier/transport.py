"""Send batches of HTTP/2 requests over one persistent, multiplexed TLS connection per origin.

The push hot path (APNs, FCM): pycurl's multi interface over libcurl + nghttp2,
which costs the least client CPU per request of the Python options measured
(DESIGN.md §5). One ``Http2Transport`` per process (or thread); it is not
thread-safe, and must be created after a fork, never inherited across one.

What happens when the server stops a connection:

- GOAWAY, or RST_STREAM(REFUSED_STREAM): the server did not process the streams
  past its last-stream-id / the refused stream. nghttp2 closes them with
  REFUSED_STREAM and libcurl itself reruns them on a new connection (up to 5
  times) before we ever see them; they come back as ordinary responses.
  (libcurl lib/http2.c ``http2_handle_stream_close`` marks ``refused_stream``;
  lib/transfer.c ``Curl_retry_request`` reruns it.)
- The connection dies before any response byte: libcurl reruns the request only
  if the connection was a reused one. Otherwise it reports CURLE_SEND_ERROR,
  CURLE_RECV_ERROR, CURLE_GOT_NOTHING or an HTTP/2 error, and this module
  resends such a request once, at once, on a new connection.
- Anything else (timeouts, a response cut short, TLS or connect failures) comes
  back with ``error`` set and ``status`` 0: the server may have processed it,
  and retrying later is the caller's decision.

Device tokens travel in URLs: nothing here logs a URL above DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import pycurl

log = logging.getLogger(__name__)

# libcurl reports a connection that died under a request with one of these; if no
# response byte had arrived, the server cannot have answered, so we resend once.
_CURLE_HTTP2_STREAM = 92  # missing from pycurl's constants
_CONNECTION_DIED = frozenset(
    {pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING, pycurl.E_HTTP2, _CURLE_HTTP2_STREAM}
)
_ERROR_KIND = {
    pycurl.E_OPERATION_TIMEDOUT: "timeout",
    pycurl.E_COULDNT_CONNECT: "connect failed",
    pycurl.E_COULDNT_RESOLVE_HOST: "name not resolved",
    pycurl.E_SSL_CONNECT_ERROR: "TLS handshake failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "TLS verification failed",
    pycurl.E_SEND_ERROR: "connection lost",
    pycurl.E_RECV_ERROR: "connection lost",
    pycurl.E_GOT_NOTHING: "connection lost",
    pycurl.E_PARTIAL_FILE: "response cut short",
    pycurl.E_HTTP2: "HTTP/2 error",
    _CURLE_HTTP2_STREAM: "HTTP/2 stream error",
}
_E_CALL_MULTI_PERFORM = pycurl.E_CALL_MULTI_PERFORM
_RESPONSE_CODE = pycurl.RESPONSE_CODE
_HEADER_SIZE = pycurl.HEADER_SIZE
# Longest we block in select() with nothing due; libcurl's own timers cut it short.
_MAX_WAIT_S = 1.0


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


class Http2Transport:
    """Multiplex batches of requests over one persistent HTTP/2 connection per origin."""

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
        self.ca_file = None if ca_file is None else str(ca_file)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_in_flight = max_in_flight
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        # One connection per origin: a transfer waits for a free stream rather than
        # opening a second connection (APNs starts a connection at one stream).
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, 1)
        self._multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, max_in_flight)
        self._idle: list[pycurl.Curl] = []
        self._closed = False

    def send_all(self, requests: Sequence[HttpRequest]) -> list[HttpResponse]:
        """Send every request; return their responses in the same order once all completed or timed out."""
        if self._closed:
            raise RuntimeError("Http2Transport is closed")
        count = len(requests)
        results: list[HttpResponse | None] = [None] * count
        if not count:
            return []
        now = time.monotonic()
        started = [now] * count
        resent = bytearray(count)
        waiting = deque(range(count))
        multi = self._multi
        in_flight = 0
        done = 0
        while done < count:
            if waiting and in_flight < self.max_in_flight:
                now = time.monotonic()
                while waiting and in_flight < self.max_in_flight:
                    index = waiting.popleft()
                    budget = self.timeout_s - (now - started[index])
                    multi.add_handle(self._prepare(index, requests[index], budget))
                    in_flight += 1
            while multi.perform()[0] == _E_CALL_MULTI_PERFORM:
                pass
            queued = 1
            while queued:
                queued, succeeded, failed = multi.info_read()
                if not (succeeded or failed):
                    break
                now = time.monotonic()
                for curl in succeeded:
                    multi.remove_handle(curl)
                    in_flight -= 1
                    index = curl.index
                    results[index] = HttpResponse(
                        requests[index],
                        curl.getinfo(_RESPONSE_CODE),
                        _parse_headers(curl.header_lines),
                        b"".join(curl.body_chunks),
                        None,
                        now - started[index],
                    )
                    self._release(curl)
                    done += 1
                for curl, code, message in failed:
                    multi.remove_handle(curl)
                    in_flight -= 1
                    index = curl.index
                    unanswered = curl.getinfo(_HEADER_SIZE) == 0
                    self._release(curl)
                    if (
                        code in _CONNECTION_DIED
                        and unanswered
                        and not resent[index]
                        and now - started[index] < self.timeout_s
                    ):
                        # The connection died under it before any answer: the server
                        # did not process it. Resend once, now, on a new connection.
                        resent[index] = 1
                        waiting.append(index)
                        log.debug("resending a request after: %s (curl %d)", message, code)
                        continue
                    results[index] = HttpResponse(
                        requests[index],
                        0,
                        {},
                        b"",
                        f"{_ERROR_KIND.get(code, 'transport error')}: {message} (curl {code})",
                        now - started[index],
                    )
                    done += 1
            if done < count and not (waiting and in_flight < self.max_in_flight):
                timeout_ms = multi.timeout()
                multi.select(_MAX_WAIT_S if timeout_ms < 0 else min(timeout_ms / 1000, _MAX_WAIT_S))
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Close the connections and free the curl handles."""
        if self._closed:
            return
        self._closed = True
        for curl in self._idle:
            curl.close()
        self._idle.clear()
        self._multi.close()

    def __enter__(self) -> Http2Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, index: int, request: HttpRequest, budget_s: float) -> pycurl.Curl:
        curl = self._idle.pop() if self._idle else pycurl.Curl()
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


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        elif line.startswith(b"HTTP/"):
            headers.clear()  # an interim (1xx) response came first; keep the final one's
    return headers

"""The sandbox's APNs provider API: Apple's checks and answers, records, faults, control API."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import time
import urllib.parse
import uuid
from pathlib import Path

import hpack
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from sandbox.apns import ApnsSandbox
from sandbox.client import SandboxError
from sandbox.h2server import ConnectionInfo, Request
from sandbox.keys import ensure_dev_keys
from sandbox.process import SandboxProcess, start_sandbox
from sandbox.state import SandboxState
from notifier.providers.transport import Http2Transport, HttpRequest
from tests.integration.sandbox_fixture import clean_sandbox_process, device_token, sandbox_process  # noqa: F401

ALERT = b'{"aps":{"alert":"Your order has shipped"}}'
TOPIC = "com.example.notifier"


@pytest.fixture
def sandbox(clean_sandbox_process: SandboxProcess) -> SandboxProcess:  # noqa: F811
    """This module's own: the session's sandbox process, reset (not conftest's dev-stack client)."""
    return clean_sandbox_process


@pytest.fixture
def transport(sandbox: SandboxProcess):
    with Http2Transport(ca_file=str(sandbox.cert_path), timeout_s=5.0) as t:
        yield t


def request(
    sandbox: SandboxProcess,
    token: str | None = None,
    body: bytes = ALERT,
    method: str = "POST",
    path: str | None = None,
    **headers: str | None,
) -> HttpRequest:
    """An APNs request with good defaults; a header given as None is left out."""
    all_headers: dict[str, str | None] = {
        "authorization": f"bearer {sandbox.apns_jwt()}",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
    }
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    url = sandbox.apns_url + (path if path is not None else f"/3/device/{token or device_token()}")
    return HttpRequest(method, url, {k: v for k, v in all_headers.items() if v is not None}, body)


# One row per documented check: (case, request changes, expected status, expected reason).
# https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns
CHECKS = [
    ("accepted", {}, 200, None),
    ("priority 10", {"apns_priority": "10"}, 200, None),
    ("priority 5", {"apns_priority": "5"}, 200, None),
    ("priority 1", {"apns_priority": "1"}, 200, None),
    ("no push type means alert", {"apns_push_type": None}, 200, None),
    ("background push", {"apns_push_type": "background", "body": b'{"aps":{"content-available":1}}'}, 200, None),
    ("voip push to the voip topic", {"apns_push_type": "voip", "apns_topic": TOPIC + ".voip"}, 200, None),
    ("voip payload up to 5120 bytes", {"apns_push_type": "voip", "apns_topic": TOPIC + ".voip",
                                       "body": b'{"x":"' + b"v" * 5000 + b'"}'}, 200, None),
    ("collapse id of 64 bytes", {"apns_collapse_id": "c" * 64}, 200, None),
    ("expiration", {"apns_expiration": "0"}, 200, None),
    ("upper-case hex token", {"token": device_token().upper()}, 200, None),
    ("GET", {"method": "GET", "body": b""}, 405, "MethodNotAllowed"),
    ("unknown path", {"path": "/3/devices/abc"}, 404, "BadPath"),
    ("no token in the path", {"path": "/3/device/"}, 400, "MissingDeviceToken"),
    ("token not 64 hex digits", {"token": "abc123"}, 400, "BadDeviceToken"),
    ("token of 64 non-hex characters", {"token": "g" * 64}, 400, "BadDeviceToken"),
    ("missing topic", {"apns_topic": None}, 400, "MissingTopic"),
    ("another app's topic", {"apns_topic": "com.other.app"}, 400, "TopicDisallowed"),
    ("voip push to the alert topic", {"apns_push_type": "voip"}, 400, "DeviceTokenNotForTopic"),
    ("unknown push type", {"apns_push_type": "banner"}, 400, "InvalidPushType"),
    ("priority 7", {"apns_priority": "7"}, 400, "BadPriority"),
    ("apns-id not a UUID", {"apns_id": "12345"}, 400, "BadMessageId"),
    ("expiration not a number", {"apns_expiration": "tomorrow"}, 400, "BadExpirationDate"),
    ("collapse id over 64 bytes", {"apns_collapse_id": "c" * 65}, 400, "BadCollapseId"),
    ("header sent twice", {"APNS-PRIORITY": "10", "apns_priority": "10"}, 400, "DuplicateHeaders"),
    ("empty payload", {"body": b""}, 400, "PayloadEmpty"),
    ("payload not JSON", {"body": b"hello"}, 400, "BadPayload"),
    ("payload a JSON array", {"body": b"[1,2]"}, 400, "BadPayload"),
    ("payload of 4097 bytes", {"body": b'{"x":"' + b"v" * 4089 + b'"}'}, 413, "PayloadTooLarge"),
    ("alert payload of 5000 bytes", {"body": b'{"x":"' + b"v" * 4992 + b'"}'}, 413, "PayloadTooLarge"),
]


def test_every_documented_check_answers_like_apns(sandbox, transport):
    # given one request per row, all in one multiplexed batch
    requests = [request(sandbox, **changes) for _, changes, _, _ in CHECKS]

    # when
    responses = transport.send_all(requests)

    # then
    for (case, _, status, reason), response in zip(CHECKS, responses):
        assert response.error is None, case
        assert response.status == status, case
        assert uuid.UUID(response.headers["apns-id"]), case
        if reason is None:
            assert response.body == b"", case
        else:
            assert json.loads(response.body) == {"reason": reason}, case
    # and only the accepted ones were recorded, but every one was counted
    accepted = sum(1 for _, _, status, _ in CHECKS if status == 200)
    assert len(sandbox.client.messages()) == accepted
    assert sandbox.client.request_count() == len(CHECKS)


def test_apns_id_is_echoed_or_generated(sandbox, transport):
    apns_id = str(uuid.uuid4())

    given, generated = transport.send_all([request(sandbox, apns_id=apns_id), request(sandbox)])

    assert given.headers["apns-id"] == apns_id
    assert uuid.UUID(generated.headers["apns-id"]).version == 4
    assert {m["id"] for m in sandbox.client.messages()} == {apns_id, generated.headers["apns-id"]}


def test_accepted_requests_are_recorded_without_the_provider_token(sandbox, transport):
    token, other = device_token(), device_token()
    started = time.time()

    transport.send_all([
        request(sandbox, token, apns_priority="10", apns_collapse_id="order-1"),
        request(sandbox, other),
    ])

    [message] = sandbox.client.messages(target=token)
    assert message["provider"] == "apns"
    assert message["target"] == token
    assert message["payload"] == json.loads(ALERT)
    assert message["headers"]["apns-topic"] == TOPIC
    assert message["headers"]["apns-collapse-id"] == "order-1"
    assert "authorization" not in message["headers"]
    assert started <= message["received_at"] <= time.time()
    assert len(sandbox.client.messages()) == 2


def test_an_unregistered_token_answers_410_with_a_timestamp_until_reset(sandbox, transport):
    token = device_token()
    sandbox.client.unregister(token)

    first, again, other = transport.send_all([request(sandbox, token), request(sandbox, token), request(sandbox)])

    for response in (first, again):
        body = json.loads(response.body)
        assert (response.status, body["reason"]) == (410, "Unregistered")
        assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    assert other.status == 200
    sandbox.client.reset()
    assert transport.send_all([request(sandbox, token)])[0].status == 200


def test_a_status_fault_hits_the_next_count_requests_then_stops(sandbox, transport):
    token = device_token()
    sandbox.client.add_fault("apns", token, status=503, reason="ServiceUnavailable", retry_after=30, count=2)

    responses = [transport.send_all([request(sandbox, token)])[0] for _ in range(3)]

    assert [r.status for r in responses] == [503, 503, 200]
    assert json.loads(responses[0].body) == {"reason": "ServiceUnavailable"}
    assert responses[0].headers["retry-after"] == "30"
    assert sandbox.client.faults() == []
    assert sandbox.client.request_count() == 3


def test_a_fault_with_only_a_status_gets_apples_reason_for_it(sandbox, transport):
    sandbox.client.add_fault(status=429)

    [response] = transport.send_all([request(sandbox)])

    assert (response.status, json.loads(response.body)) == (429, {"reason": "TooManyRequests"})


def test_a_fault_matches_targets_by_pattern(sandbox, transport):
    hit, miss = "ab" + device_token()[2:], "cd" + device_token()[2:]
    sandbox.client.add_fault(target="ab*", status=500, count=None)

    responses = transport.send_all([request(sandbox, hit), request(sandbox, miss), request(sandbox, hit)])

    assert [r.status for r in responses] == [500, 200, 500]


@pytest.mark.parametrize(("fraction", "expected"), [(1.0, {500}), (0.0, {200})])
def test_a_fraction_fault_hits_that_share_of_requests(sandbox, transport, fraction, expected):
    sandbox.client.add_fault(status=500, fraction=fraction)

    responses = transport.send_all([request(sandbox) for _ in range(20)])

    assert {r.status for r in responses} == expected


def test_goaway_before_the_matching_request_leaves_it_unprocessed(sandbox, transport):
    # given GOAWAY is sent instead of processing the first request
    sandbox.client.add_fault(goaway_after=0)
    tokens = [device_token() for _ in range(20)]

    # when
    responses = transport.send_all([request(sandbox, t) for t in tokens])

    # then libcurl reruns it on a new connection and every notification is recorded once
    assert [r.status for r in responses] == [200] * 20
    assert sorted(m["target"] for m in sandbox.client.messages()) == sorted(tokens)


class EagerClient:
    """An HTTP/2 client that opens streams without waiting for the server's stream limit, as Go's did.

    Written with raw frames because a conforming client library (h2, nghttp2) will not break the limit.
    """

    def __init__(self, sandbox: SandboxProcess) -> None:
        context = ssl.create_default_context(cafile=str(sandbox.cert_path))
        context.set_alpn_protocols(["h2"])
        url = urllib.parse.urlsplit(sandbox.apns_url)
        raw = socket.create_connection((url.hostname, url.port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=url.hostname)
        self.authority = url.netloc
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.next_stream = 1
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())

    def frames(self):
        while True:
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9:9 + length]))
                self.buffer = self.buffer[9 + length:]
                yield frame
            self.buffer += self.sock.recv(65536)

    def acknowledge_settings_until_limit(self) -> int:
        """ACK every SETTINGS until the server's MAX_CONCURRENT_STREAMS arrives; return it."""
        for frame in self.frames():
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                if SettingsFrame.MAX_CONCURRENT_STREAMS in frame.settings:
                    return frame.settings[SettingsFrame.MAX_CONCURRENT_STREAMS]

    def open(self, path: str, headers: dict[str, str]) -> int:
        """Send a request's HEADERS only (the stream stays open until finish())."""
        stream_id, self.next_stream = self.next_stream, self.next_stream + 2
        block = self.encoder.encode([(":method", "POST"), (":scheme", "https"), (":authority", self.authority),
                                     (":path", path), *headers.items()])
        self.sock.sendall(HeadersFrame(stream_id, data=block, flags=["END_HEADERS"]).serialize())
        return stream_id

    def finish(self, stream_id: int, body: bytes) -> None:
        self.sock.sendall(DataFrame(stream_id, data=body, flags=["END_STREAM"]).serialize())

    def outcomes(self, stream_ids: set[int]) -> dict[int, str]:
        """Each stream's end: its :status, or REFUSED_STREAM / another reset; GOAWAY fails the test."""
        outcomes: dict[int, str] = {}
        for frame in self.frames():
            if isinstance(frame, GoAwayFrame):
                pytest.fail(f"connection error instead of a stream error: GOAWAY {frame.error_code}")
            if isinstance(frame, HeadersFrame):
                status = dict(self.decoder.decode(frame.data))[":status"]
                if frame.stream_id in stream_ids:
                    outcomes[frame.stream_id] = status
            elif isinstance(frame, RstStreamFrame) and frame.stream_id in stream_ids:
                outcomes[frame.stream_id] = "REFUSED_STREAM" if frame.error_code == 7 else f"reset {frame.error_code}"
            if set(outcomes) == stream_ids:
                return outcomes


def test_streams_over_the_limit_are_refused_one_by_one_not_the_connection(sandbox):
    """RFC 9113 §5.1.2: a stream over SETTINGS_MAX_CONCURRENT_STREAMS is a stream error, not GOAWAY."""
    client = EagerClient(sandbox)
    headers = {"authorization": f"bearer {sandbox.apns_jwt()}", "apns-topic": TOPIC, "apns-push-type": "alert"}
    tokens = [device_token() for _ in range(31)]
    # given the server's opening limit (one stream until the first authenticated request), acknowledged
    assert client.acknowledge_settings_until_limit() == 1

    # when a client opens 31 streams at once regardless
    streams = [client.open(f"/3/device/{t}", headers) for t in tokens]
    refused = client.outcomes(set(streams[1:]))

    # then each stream over the limit is refused on its own, and the first one goes on on the same connection
    assert set(refused.values()) == {"REFUSED_STREAM"}
    client.finish(streams[0], ALERT)
    assert client.outcomes({streams[0]}) == {streams[0]: "200"}
    # and once it answered (authenticated: the limit is raised), the refused ones succeed on their retry
    retries = [client.open(f"/3/device/{t}", headers) for t in tokens[1:]]
    for stream_id in retries:
        client.finish(stream_id, ALERT)
    assert set(client.outcomes(set(retries)).values()) == {"200"}
    assert sorted(m["target"] for m in sandbox.client.messages()) == sorted(tokens)


def test_reset_forgets_records_counts_and_faults(sandbox, transport):
    sandbox.client.add_fault(status=500, count=None)
    transport.send_all([request(sandbox)])

    sandbox.client.reset()

    assert sandbox.client.faults() == []
    assert sandbox.client.request_count() == 0
    assert sandbox.client.connections()["accepted"] == 0
    assert transport.send_all([request(sandbox)])[0].status == 200
    assert len(sandbox.client.messages()) == 1


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"provider": "carrier-pigeon"}, "provider"),
        ({"provider": "apns", "status": 9000}, "status"),
        ({"provider": "apns", "status": 500, "fraction": 2}, "fraction"),
        ({"provider": "apns", "status": 500, "count": 0}, "count"),
        ({"provider": "apns", "drop": "yes"}, "drop"),
        ({"provider": "apns", "status": 500, "colour": "red"}, "colour"),
        ({"provider": "apns"}, "fault"),
    ],
)
def test_a_bad_fault_is_refused_naming_the_field(sandbox, spec, field):
    with pytest.raises(SandboxError) as refused:
        sandbox.client._call("POST", "/_sandbox/faults", json=spec)

    assert refused.value.status == 400
    assert field in str(refused.value)


def test_control_api_answers_json_errors(sandbox):
    with pytest.raises(SandboxError) as unknown:
        sandbox.client._call("GET", "/_sandbox/nothing")
    with pytest.raises(SandboxError) as wrong_provider:
        sandbox.client.request_count("carrier-pigeon")

    assert unknown.value.status == 404
    assert wrong_provider.value.status == 400
    assert sandbox.client.health()["endpoints"]["apns"] == sandbox.apns_url


def test_the_provider_token_is_verified_once_and_its_age_checked_every_time():
    # given an in-process handler with a clock we control
    key = ec.generate_private_key(ec.SECP256R1())
    now = [1_800_000_000.0]
    apns = ApnsSandbox(
        SandboxState(), public_key=key.public_key(), key_id="KEY", team_id="TEAM", bundle_id=TOPIC, clock=lambda: now[0]
    )
    verified = []
    verify = apns._verify_jwt
    apns._verify_jwt = lambda token: verified.append(token) or verify(token)
    token = jwt.encode({"iss": "TEAM", "iat": int(now[0])}, key, algorithm="ES256", headers={"kid": "KEY"})
    connection = ConnectionInfo(1, "test")

    def send() -> tuple[int, bytes]:
        headers = {"authorization": f"bearer {token}", "apns-topic": TOPIC}
        reply = apns.handle(Request("POST", f"/3/device/{device_token()}", headers, ALERT, 1, connection))
        return reply.status, reply.body

    # when the same token is used three times, the last after more than an hour
    first, second = send(), send()
    now[0] += 3601
    third = send()

    # then its signature was checked once, but its age each time
    assert verified == [token]
    assert first[0] == second[0] == 200
    assert third == (403, b'{"reason":"ExpiredProviderToken"}')


def test_ensure_dev_keys_creates_a_private_p256_key_once(tmp_path: Path):
    path = ensure_dev_keys(tmp_path / "keys")
    first = path.read_bytes()

    again = ensure_dev_keys(tmp_path / "keys")

    assert again == path and path.name == "apns_key.p8"
    assert again.read_bytes() == first
    key = serialization.load_pem_private_key(first, password=None)
    # PKCS8, as Apple's .p8 files are: re-encoding it as PKCS8 gives back the same bytes.
    assert key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) == first
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_sandbox_writes_its_ca_and_stops_cleanly_on_sigint(tmp_path: Path):
    process = start_sandbox(tmp_path)
    try:
        assert process.cert_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert process.client.health()["status"] == "ok"
        process.process.send_signal(signal.SIGINT)
        assert process.process.wait(10) == 0
    finally:
        process.stop()

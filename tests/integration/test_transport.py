"""Http2Transport against the sandbox's APNs server, over real HTTP/2 and TLS."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid

import pytest
from tests.integration.sandbox_fixture import clean_sandbox_process, device_token, sandbox_process  # noqa: F401

from sandbox.process import SandboxProcess
from notifier.providers.transport import Http2Transport, HttpRequest

PAYLOAD = b'{"aps":{"alert":"Your order has shipped"}}'


def push(
    sandbox: SandboxProcess,
    token: str | None = None,
    *,
    jwt: str | None = None,
    body: bytes = PAYLOAD,
    tag: object = None,
    **headers: str,
) -> HttpRequest:
    """Build an APNs request to the sandbox; keyword headers use _ for -."""
    all_headers = {
        "authorization": f"bearer {jwt or sandbox.apns_jwt()}",
        "apns-topic": sandbox.config.apns_topic,
        "apns-push-type": "alert",
        "content-type": "application/json",
    }
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return HttpRequest("POST", f"{sandbox.apns_url}/3/device/{token or device_token()}", all_headers, body, tag)


@pytest.fixture
def transport(clean_sandbox_process: SandboxProcess):  # noqa: F811
    with Http2Transport(ca_file=str(clean_sandbox_process.cert_path), timeout_s=5.0) as t:
        yield t


def test_a_batch_of_200_is_multiplexed_over_one_connection(clean_sandbox_process, transport):  # noqa: F811
    # given
    tokens = [device_token() for _ in range(200)]
    requests = [push(clean_sandbox_process, token, tag=i) for i, token in enumerate(tokens)]

    # when
    responses = transport.send_all(requests)

    # then every request got its own answer, in order
    assert [r.status for r in responses] == [200] * 200
    assert [r.request.tag for r in responses] == list(range(200))
    assert all(r.error is None and uuid.UUID(r.headers["apns-id"]) for r in responses)
    # and all of it went over one connection
    assert clean_sandbox_process.client.connections()["accepted"] == 1
    assert clean_sandbox_process.client.request_count() == 200
    assert sorted(m["target"] for m in clean_sandbox_process.client.messages()) == sorted(tokens)


def test_the_connection_persists_across_batches(clean_sandbox_process, transport):  # noqa: F811
    for _ in range(3):
        responses = transport.send_all([push(clean_sandbox_process) for _ in range(50)])
        assert {r.status for r in responses} == {200}

    assert clean_sandbox_process.client.connections()["accepted"] == 1


def test_responses_carry_status_headers_and_body_of_errors(clean_sandbox_process, transport):  # noqa: F811
    apns_id = str(uuid.uuid4())

    [response] = transport.send_all([push(clean_sandbox_process, "not-a-token", apns_id=apns_id)])

    assert response.status == 400
    assert response.error is None
    assert response.headers["apns-id"] == apns_id
    assert json.loads(response.body) == {"reason": "BadDeviceToken"}
    assert response.elapsed_s > 0


def test_an_empty_batch_sends_nothing(transport):
    assert transport.send_all([]) == []


def test_max_in_flight_bounds_the_streams_but_not_the_batch(clean_sandbox_process):  # noqa: F811
    with Http2Transport(ca_file=str(clean_sandbox_process.cert_path), max_in_flight=7) as transport:
        responses = transport.send_all([push(clean_sandbox_process, tag=i) for i in range(60)])

    assert [r.status for r in responses] == [200] * 60
    assert [r.request.tag for r in responses] == list(range(60))
    assert clean_sandbox_process.client.connections()["accepted"] == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "MissingProviderToken"),
        ("not bearer", "MissingProviderToken"),
        ("expired", "ExpiredProviderToken"),
        ("issued in the future", "InvalidProviderToken"),
        ("other kid", "InvalidProviderToken"),
        ("other team", "InvalidProviderToken"),
        ("other key", "InvalidProviderToken"),
        ("garbage", "InvalidProviderToken"),
    ],
)
def test_provider_token_check(clean_sandbox_process, transport, case, reason):  # noqa: F811
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = int(time.time())
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    authorization = {
        "not bearer": f"basic {clean_sandbox_process.apns_jwt()}",
        "expired": f"bearer {clean_sandbox_process.apns_jwt(iat=now - 3601)}",
        "issued in the future": f"bearer {clean_sandbox_process.apns_jwt(iat=now + 600)}",
        "other kid": f"bearer {clean_sandbox_process.apns_jwt(key_id='OTHERKEY00')}",
        "other team": f"bearer {clean_sandbox_process.apns_jwt(team_id='OTHERTEAM0')}",
        "other key": f"bearer {clean_sandbox_process.apns_jwt(key_pem=other_key)}",
        "garbage": "bearer not.a.jwt",
    }
    request = push(clean_sandbox_process)
    if case == "missing":
        del request.headers["authorization"]
    else:
        request.headers["authorization"] = authorization[case]

    [response] = transport.send_all([request])

    assert (response.status, json.loads(response.body)) == (403, {"reason": reason})
    assert clean_sandbox_process.client.messages() == []


def test_a_valid_token_of_almost_an_hour_is_accepted(clean_sandbox_process, transport):  # noqa: F811
    request = push(clean_sandbox_process, jwt=clean_sandbox_process.apns_jwt(iat=int(time.time()) - 3500))

    [response] = transport.send_all([request])

    assert response.status == 200


def test_goaway_after_n_streams_still_delivers_every_request_once(clean_sandbox_process, transport):  # noqa: F811
    # given the server stops the connection after 50 streams
    transport.send_all([push(clean_sandbox_process)])  # the connection is up and at full stream count
    clean_sandbox_process.client.reset()
    clean_sandbox_process.client.add_fault(goaway_after=50)
    tokens = [device_token() for _ in range(200)]

    # when
    responses = transport.send_all([push(clean_sandbox_process, token) for token in tokens])

    # then the streams past GOAWAY's last-stream-id went again on a new connection
    assert [r.status for r in responses] == [200] * 200
    assert clean_sandbox_process.client.connections()["accepted"] == 1  # the new one
    # and none was processed twice: refused streams never reached the server
    assert clean_sandbox_process.client.request_count() == 200
    assert sorted(m["target"] for m in clean_sandbox_process.client.messages()) == sorted(tokens)


def test_a_refused_stream_is_rerun_by_libcurl_itself(clean_sandbox_process, transport):  # noqa: F811
    # given the server refuses the first stream (RST_STREAM REFUSED_STREAM: not processed)
    clean_sandbox_process.client.add_fault(refuse=True)
    token = device_token()

    # when
    [response] = transport.send_all([push(clean_sandbox_process, token)])

    # then libcurl ran it again on a new connection, and it was delivered once
    assert response.status == 200
    assert clean_sandbox_process.client.request_count() == 2
    assert [m["target"] for m in clean_sandbox_process.client.messages()] == [token]


def test_a_stream_refused_every_time_is_not_resent_on_top_of_libcurls_reruns(
    clean_sandbox_process, transport  # noqa: F811
):
    clean_sandbox_process.client.add_fault(refuse=True, count=None)

    [response] = transport.send_all([push(clean_sandbox_process)])

    assert response.status == 0
    assert response.error.startswith("connection lost")
    # libcurl's own first try and 5 reruns (CONN_MAX_RETRIES in lib/transfer.c), no more
    assert clean_sandbox_process.client.request_count() == 6


def test_a_connection_dropped_mid_batch_resends_what_had_no_answer(clean_sandbox_process, transport):  # noqa: F811
    # given a connection in full use, which the server drops at the 101st request of a batch
    transport.send_all([push(clean_sandbox_process)])
    clean_sandbox_process.client.reset()
    tokens = [device_token() for _ in range(200)]
    clean_sandbox_process.client.add_fault(target=tokens[100], drop=True)

    # when
    responses = transport.send_all([push(clean_sandbox_process, token) for token in tokens])

    # then everything arrived anyway, on a new connection, each notification once
    assert [r.status for r in responses] == [200] * 200
    assert sorted(m["target"] for m in clean_sandbox_process.client.messages()) == sorted(tokens)
    assert clean_sandbox_process.client.request_count() == 201  # the dropping one was seen twice
    assert clean_sandbox_process.client.connections()["accepted"] == 1


def test_a_request_is_resent_only_once(clean_sandbox_process, transport):  # noqa: F811
    # given a fresh connection (libcurl itself reruns only on reused ones) that drops twice
    clean_sandbox_process.client.add_fault(drop=True, count=2)

    # when
    [response] = transport.send_all([push(clean_sandbox_process)])

    # then the one resend also failed, and that is reported
    assert response.status == 0
    assert response.error.startswith("connection lost")
    assert clean_sandbox_process.client.request_count() == 2
    assert clean_sandbox_process.client.messages() == []


def test_latency_below_the_timeout_is_waited_for(clean_sandbox_process, transport):  # noqa: F811
    token = device_token()
    clean_sandbox_process.client.add_fault(target=token, latency_ms=300)

    [response] = transport.send_all([push(clean_sandbox_process, token)])

    assert response.status == 200
    assert response.elapsed_s >= 0.3


def test_a_timeout_fails_only_the_slow_request(clean_sandbox_process):  # noqa: F811
    # given one token the server answers only after 3 s, and a 0.5 s timeout
    slow = device_token()
    clean_sandbox_process.client.add_fault(target=slow, latency_ms=3000)
    with Http2Transport(ca_file=str(clean_sandbox_process.cert_path), timeout_s=0.5) as transport:
        requests = [push(clean_sandbox_process), push(clean_sandbox_process, slow), push(clean_sandbox_process)]

        # when
        started = time.monotonic()
        responses = transport.send_all(requests)
        took = time.monotonic() - started

        # then the slow one timed out, was not resent, and did not hold up the others
        assert [r.status for r in responses] == [200, 0, 200]
        assert responses[1].error.startswith("timeout")
        assert 0.45 <= responses[1].elapsed_s < 1.5
        assert responses[0].elapsed_s < 0.45 and responses[2].elapsed_s < 0.45
        assert took < 1.5
        assert clean_sandbox_process.client.request_count() == 3
        # and the connection survives the abandoned stream
        assert transport.send_all([push(clean_sandbox_process)])[0].status == 200
        assert clean_sandbox_process.client.connections()["accepted"] == 1


def test_a_payload_over_4096_bytes_is_refused_with_413(clean_sandbox_process, transport):  # noqa: F811
    fits = b'{"aps":{"alert":"' + b"x" * (4096 - 20) + b'"}}'
    too_big = fits[:-3] + b'x"}}'
    assert (len(fits), len(too_big)) == (4096, 4097)

    responses = transport.send_all([push(clean_sandbox_process, body=fits), push(clean_sandbox_process, body=too_big)])

    assert responses[0].status == 200
    assert (responses[1].status, json.loads(responses[1].body)) == (413, {"reason": "PayloadTooLarge"})


def test_a_refused_connection_is_an_error_not_a_resend(clean_sandbox_process):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    request = HttpRequest("POST", f"https://127.0.0.1:{port}/3/device/{device_token()}", {}, PAYLOAD)
    with Http2Transport(ca_file=str(clean_sandbox_process.cert_path), connect_timeout_s=2) as transport:
        [response] = transport.send_all([request])

    assert response.status == 0
    assert response.error.startswith("connect failed")


def test_tls_verification_is_on(clean_sandbox_process):  # noqa: F811
    # without the sandbox's CA the certificate is not trusted
    with Http2Transport(timeout_s=5) as transport:
        [response] = transport.send_all([push(clean_sandbox_process)])

    assert response.status == 0
    assert "TLS" in response.error
    assert clean_sandbox_process.client.request_count() == 0


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(
    clean_sandbox_process, transport  # noqa: F811
):
    # given a transport with a live connection, inherited by a child process
    assert transport.send_all([push(clean_sandbox_process)])[0].status == 200
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            statuses = [r.status for r in transport.send_all([push(clean_sandbox_process) for _ in range(5)])]
            os.write(write_end, json.dumps(statuses).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_statuses = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)

    # then the child sent on a connection of its own
    assert child_statuses == [200] * 5
    # and the parent's connection still works
    assert [r.status for r in transport.send_all([push(clean_sandbox_process) for _ in range(5)])] == [200] * 5
    assert clean_sandbox_process.client.connections()["accepted"] == 2


def test_an_interrupted_send_leaves_the_transport_usable(clean_sandbox_process, transport):  # noqa: F811
    # given a send that is interrupted (think Celery's soft time limit) while a reply is pending
    slow = device_token()
    clean_sandbox_process.client.add_fault(target=slow, latency_ms=2000)

    def interrupt(signum, frame):
        raise TimeoutError("soft time limit")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(TimeoutError):
            transport.send_all([push(clean_sandbox_process, slow), push(clean_sandbox_process)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    # then the next batch goes through, on the same connection
    assert [r.status for r in transport.send_all([push(clean_sandbox_process) for _ in range(3)])] == [200] * 3
    assert clean_sandbox_process.client.connections()["accepted"] == 1


def test_a_missing_ca_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="ca_file"):
        Http2Transport(ca_file=str(tmp_path / "nowhere.pem"))


def test_a_closed_transport_refuses_to_send(clean_sandbox_process):  # noqa: F811
    transport = Http2Transport(ca_file=str(clean_sandbox_process.cert_path))
    transport.close()
    transport.close()

    with pytest.raises(RuntimeError):
        transport.send_all([push(clean_sandbox_process)])


# ---- One request that cannot be set up never stops the others (issue 10)

UNSENDABLE = [
    ("non-ASCII in the URL", {"token": "café" + device_token()}),
    ("a fragment in the URL", {"token": device_token() + "#x"}),
    ("CR/LF in the URL", {"token": device_token() + "\r\nx-injected: yes"}),
    ("a space in the URL", {"token": device_token() + " x"}),
    ("CR/LF in a header", {"apns_collapse_id": "c2\r\nx-injected: yes"}),
    ("non-ASCII in a header", {"apns_collapse_id": "cölläpse"}),
    ("NUL in a header", {"apns_collapse_id": "c\x00"}),
]


@pytest.mark.parametrize(("case", "changes"), UNSENDABLE, ids=[c for c, _ in UNSENDABLE])
def test_an_unsendable_request_fails_alone_and_is_never_sent(
    clean_sandbox_process, transport, case, changes  # noqa: F811
):
    # given a batch with one request that cannot be sent as it is, between two good ones
    bad = push(clean_sandbox_process, changes.get("token"), tag="bad",
               **{k: v for k, v in changes.items() if k != "token"})
    good = [push(clean_sandbox_process, tag=i) for i in range(2)]

    # when
    responses = transport.send_all([good[0], bad, good[1]])

    # then the good ones went out, and the bad one was answered here without being sent
    assert [r.status for r in responses] == [200, 0, 200]
    assert responses[1].unsendable and responses[1].error.startswith("request not sent")
    assert not responses[0].unsendable and not responses[2].unsendable
    assert clean_sandbox_process.client.request_count() == 2
    assert all("x-injected" not in m["headers"] for m in clean_sandbox_process.client.messages())
    # and the error text never quotes the value (a device token, in a URL)
    assert "café" not in responses[1].error and "/3/device/" not in responses[1].error
    assert "c2" not in responses[1].error


def test_a_batch_of_only_unsendable_requests_returns_at_once(clean_sandbox_process, transport):  # noqa: F811
    started = time.monotonic()
    responses = transport.send_all([push(clean_sandbox_process, "café") for _ in range(3)])
    assert [r.unsendable for r in responses] == [True] * 3
    assert time.monotonic() - started < 0.2
    assert clean_sandbox_process.client.request_count() == 0


def test_a_setopt_that_raises_fails_only_its_request(clean_sandbox_process, transport):  # noqa: F811
    # given a request whose method pycurl refuses (non-ASCII: a bug of the caller, not the server's)
    bad = push(clean_sandbox_process)
    bad.method = "PÖST"

    responses = transport.send_all([push(clean_sandbox_process), bad, push(clean_sandbox_process)])

    assert [(r.status, r.unsendable) for r in responses] == [(200, False), (0, True), (200, False)]
    # and the transport is fine afterwards
    assert transport.send_all([push(clean_sandbox_process)])[0].status == 200


def test_on_response_is_called_as_each_request_completes(clean_sandbox_process, transport):  # noqa: F811
    # given a slow request, a fast one and one that cannot be sent
    slow = device_token()
    clean_sandbox_process.client.add_fault(target=slow, latency_ms=1500)
    requests = [push(clean_sandbox_process, slow, tag="slow"), push(clean_sandbox_process, tag="fast"),
                push(clean_sandbox_process, "café", tag="unsendable")]
    seen: list[tuple[object, float]] = []
    started = time.monotonic()

    # when
    responses = transport.send_all(requests, lambda r: seen.append((r.request.tag, time.monotonic() - started)))

    # then each request was reported once, in completion order, the fast one while the slow one was in flight
    assert [tag for tag, _ in seen] == ["unsendable", "fast", "slow"]
    assert seen[1][1] < 1.0 <= 1.4 <= seen[2][1]
    assert [r.status for r in responses] == [200, 200, 0]


def test_a_resent_request_is_reported_once_with_its_final_response(clean_sandbox_process, transport):  # noqa: F811
    token = device_token()
    clean_sandbox_process.client.add_fault(target=token, drop=True, count=1)
    seen = []
    [response] = transport.send_all([push(clean_sandbox_process, token)], seen.append)
    assert response.status == 200 and seen == [response]
    assert clean_sandbox_process.client.request_count() == 2


def test_an_exception_in_on_response_does_not_strand_the_batch(clean_sandbox_process, transport, caplog):  # noqa: F811
    calls = []

    def failing(response):
        calls.append(response.request.tag)
        raise ConnectionError("the record store is down")

    responses = transport.send_all([push(clean_sandbox_process, tag=i) for i in range(5)], failing)

    assert [r.status for r in responses] == [200] * 5
    assert sorted(calls) == list(range(5))
    assert "on_response callback raised ConnectionError" in caplog.text
    assert clean_sandbox_process.client.request_count() == 5

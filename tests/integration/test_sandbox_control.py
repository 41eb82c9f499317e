"""The sandbox's control API is locked down, its receipts go only where configured, and it stops quietly.

Finding 10 of issue 10: the control API (no auth) minted signed provider webhooks and
posted them to any URL given, a forged-webhook and SSRF tool in the compose stack. And
issue 9: the sandbox printed tracebacks when stopped with connections open.
"""
from __future__ import annotations

import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sandbox import devstack
from notifier.providers.sendgrid.signature import verify_sendgrid
from sandbox.process import SandboxProcess, start_sandbox

TWILIO_SID = "AC00000000000000000000000000000000"
TWILIO_TOKEN = "receipts-test-token"


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        _Hook.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    """A webhook receiver on loopback: what the sandbox is configured to report to."""
    _Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", devstack.free_port()), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def reporting_sandbox(tmp_path: Path, hook: str) -> Iterator[SandboxProcess]:
    process = start_sandbox(tmp_path, sendgrid_event_webhook_url=hook + "/v1/webhooks/sendgrid",
                            twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=TWILIO_SID)
    try:
        yield process
    finally:
        assert process.stop() == 0


def _send_email(sandbox: SandboxProcess, address: str) -> str:
    response = requests.post(sandbox.urls["sendgrid"] + "/v3/mail/send", timeout=10, headers={
        "Authorization": f"Bearer {sandbox.config.sendgrid_api_key}"}, json={
        "personalizations": [{"to": [{"email": address}], "custom_args": {"delivery_id": "7"}}],
        "from": {"email": "shop@example.com"}, "subject": "Receipt",
        "content": [{"type": "text/plain", "value": "Thanks"}]})
    assert response.status_code == 202, response.text
    return response.headers["X-Message-Id"]


def _send_sms(sandbox: SandboxProcess, callback: str) -> str:
    response = requests.post(f"{sandbox.urls['twilio']}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                             auth=(TWILIO_SID, TWILIO_TOKEN), timeout=10,
                             data={"To": "+4790000001", "From": "+15005550006", "Body": "Code",
                                   "StatusCallback": callback})
    assert response.status_code == 201, response.text
    return response.json()["sid"]


def test_receipts_take_no_url_and_post_only_to_the_configured_webhook(reporting_sandbox, hook):
    # Given an email the sandbox's SendGrid accepted
    mid = _send_email(reporting_sandbox, "ada@example.com")
    client = reporting_sandbox.client

    # When a receipt names a URL of its own (a host inside the network, say)
    elsewhere = client._session.post(client.control_url + "/_sandbox/receipts", timeout=10, json={
        "provider": "sendgrid", "message_id": mid, "event": "delivered", "url": "http://169.254.169.254/latest"})
    # Then it is refused, and nothing was posted anywhere
    assert elsewhere.status_code == 400 and "url" in elsewhere.json()["error"]
    assert _Hook.received == []

    # And without one, the signed event goes to the configured Event Webhook URL only
    answer = client.receipt("sendgrid", "delivered", message_id=mid)
    assert answer["status"] == 200 and answer["url"] == hook + "/v1/webhooks/sendgrid"
    [(path, headers, body)] = _Hook.received
    assert path == "/v1/webhooks/sendgrid" and json.loads(body)[0]["event"] == "delivered"
    public_key = client.receipt_keys()["sendgrid_webhook_public_key"]
    assert verify_sendgrid(public_key, body, headers["X-Twilio-Email-Event-Webhook-Signature"],
                           headers["X-Twilio-Email-Event-Webhook-Timestamp"], max_age_s=600) is None


def test_a_twilio_callback_off_the_configured_origin_is_not_posted(reporting_sandbox, hook):
    # Given two SMS: one whose StatusCallback is the configured API, one pointing elsewhere
    ours = _send_sms(reporting_sandbox, hook + "/v1/webhooks/twilio")
    theirs = _send_sms(reporting_sandbox, "http://127.0.0.1:1/internal/admin")
    client = reporting_sandbox.client

    refused = client._session.post(client.control_url + "/_sandbox/receipts", timeout=10, json={
        "provider": "twilio", "message_id": theirs, "event": "delivered"})
    posted = client.receipt("twilio", "delivered", message_id=ours)

    assert refused.status_code == 400 and "StatusCallback" in refused.json()["error"]
    assert posted["status"] == 200
    assert [path for path, _, _ in _Hook.received] == ["/v1/webhooks/twilio"]


def test_with_a_token_every_control_request_but_health_needs_it(tmp_path):
    process = start_sandbox(tmp_path, control_token="s3cret-token")
    try:
        url = process.control_url
        anonymous = [requests.request(m, url + p, timeout=10, json={}).status_code for m, p in (
            ("GET", "/_sandbox/messages"), ("POST", "/_sandbox/faults"), ("POST", "/_sandbox/reset"),
            ("GET", "/_sandbox/receipts"), ("POST", "/_sandbox/receipts"))]
        wrong = requests.get(url + "/_sandbox/messages", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert anonymous == [401] * 5 and wrong.status_code == 401
        assert requests.get(url + "/_sandbox/health", timeout=10).status_code == 200
        assert process.client.messages() == []  # the client sends the token
    finally:
        assert process.stop() == 0


def _sandbox_args(tmp_path: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "sandbox", "--cert-path", str(tmp_path / "cert.pem"),
            "--apns-key-path", str(tmp_path / "apns.p8"), "--fcm-credentials-path", str(tmp_path / "fcm.json"),
            "--sendgrid-webhook-key-path", str(tmp_path / "sg.pem"),
            "--sendgrid-webhook-public-key-path", str(tmp_path / "sg.pub")]
    for name in ("control", "apns", "fcm", "fcm-token", "sendgrid", "twilio", "smtp"):
        args += [f"--{name}-port", "0"]
    return args + list(extra)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_SANDBOX_")}


def test_a_control_api_beyond_loopback_without_a_token_refuses_to_start(tmp_path):
    result = subprocess.run(_sandbox_args(tmp_path, "--control-host", "0.0.0.0"), env=_env(),
                            capture_output=True, text=True, timeout=60, cwd=devstack.ROOT)
    assert result.returncode == 2
    assert "control_token" in result.stderr and "NOTIFIER_SANDBOX_CONTROL_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_sandbox_stops_without_a_traceback_with_connections_open(tmp_path, signum):
    # Given a running sandbox with idle and half-sent connections to its control API and SendGrid
    proc = subprocess.Popen(_sandbox_args(tmp_path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=devstack.ROOT)
    urls = {}
    for line in proc.stdout:
        if " listening on " in line:
            words = line.split()
            urls[words[1]] = words[-1]
        if line.strip() == "sandbox ready":
            break
    opened = []
    for name, request in (("control", b"GET /_sandbox/health HTTP/1.1\r\nHost: x\r\n\r\n"),
                          ("control", b"GET /_sandbox/hea"), ("sendgrid", b"POST /v3/mail/send HTTP/1.1\r\n")):
        host, port = url_host_port(urls[name])
        conn = socket.create_connection((host, port), timeout=5)
        conn.sendall(request)
        opened.append(conn)
    opened[0].recv(1024)

    # When it is told to stop
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=20)
    finally:
        for conn in opened:
            conn.close()

    # Then it exits 0 and says so without a traceback
    assert proc.returncode == 0
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert "sandbox stopping" in stderr


def url_host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition("/")[2].rpartition(":")
    return host, int(port)

"""The HTTP API as a real server process (`notifier api`) on a free loopback port.

Import the fixture into a test module (``from tests.api_fixture import api``). Webhook
verification keys are generated at run time; the helpers sign requests the way SendGrid
and Twilio document it, independently of the code under test.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import TEST_VAR, child_env
from notifier import api_keys, devstack

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def public_key_b64(private_key: ec.EllipticCurvePrivateKey) -> str:
    """A public key as SendGrid shows it: base64 of DER SubjectPublicKeyInfo."""
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@dataclass
class Api:
    url: str
    public_url: str
    producer_key: str
    admin_key: str
    sendgrid_key: ec.EllipticCurvePrivateKey
    twilio_token: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.producer_key}"}

    def sendgrid_headers(self, body: bytes, *, timestamp: int | None = None,
                         key: ec.EllipticCurvePrivateKey | None = None) -> dict[str, str]:
        """Headers SendGrid sends: ECDSA P-256/SHA-256 over timestamp + body, base64 DER."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = (key or self.sendgrid_key).sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }

    def twilio_headers(self, params: dict[str, str] | list[tuple[str, str]], *, token: str | None = None,
                       url: str | None = None) -> dict[str, str]:
        """Headers Twilio sends: base64 HMAC-SHA1 over the public URL and the POST params sorted by name."""
        pairs = sorted(set(params.items() if isinstance(params, dict) else params))
        data = (url or self.public_url + "/v1/webhooks/twilio") + "".join(k + v for k, v in pairs)
        digest = hmac.new((token or self.twilio_token).encode(), data.encode(), hashlib.sha1).digest()
        return {"X-Twilio-Signature": base64.b64encode(digest).decode()}


@contextmanager
def serve(env: dict[str, str], log_name: str = "api.log") -> Iterator[str]:
    """Run `notifier api` with `env` on a free loopback port; yield its base URL."""
    port = free_port()
    log_path = TEST_VAR / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        devstack.wait_for_port("127.0.0.1", port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        devstack.stop(proc)


@pytest.fixture(scope="session")
def api(database) -> Iterator[Api]:
    """`notifier api` serving the test database, with fresh keys and webhook secrets."""
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public_url = "https://notify.example.test"  # what Twilio is told; it signs this, not the loopback URL
    twilio_token = secrets.token_hex(16)
    env = child_env() | {
        "NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key_b64(sendgrid_key),
        "NOTIFIER_TWILIO_AUTH_TOKEN": twilio_token,
        "NOTIFIER_API_PUBLIC_URL": public_url,
    }
    with serve(env) as url:
        _, producer_key = api_keys.create_key("tests: producer", "producer")
        _, admin_key = api_keys.create_key("tests: admin", "admin")
        requests.get(url + "/openapi.json", timeout=10).raise_for_status()
        yield Api(url, public_url, producer_key, admin_key, sendgrid_key, twilio_token)

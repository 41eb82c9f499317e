"""The HTTP API as a real server process (`notifier api`) on a free loopback port.

Import the fixture into a test module (``from tests.integration.api_fixture import api``). Webhook
verification keys are generated at run time; the helpers sign requests the way SendGrid
and Twilio document it, independently of the code under test.
"""
from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.environment import TEST_VAR, child_env
from notifier.accounts import api_keys
from sandbox import devstack
from sandbox.signing import public_key_b64, sendgrid_headers, twilio_signature

ROOT = Path(__file__).resolve().parents[2]


free_port = devstack.free_port


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
        return sendgrid_headers(key or self.sendgrid_key, body, timestamp=timestamp)

    def twilio_headers(self, params: dict[str, str] | list[tuple[str, str]], *, token: str | None = None,
                       url: str | None = None) -> dict[str, str]:
        """Headers Twilio sends: base64 HMAC-SHA1 over the public URL and the POST params sorted by name."""
        url = url or self.public_url + "/v1/webhooks/twilio"
        return {"X-Twilio-Signature": twilio_signature(token or self.twilio_token, url, params)}


@contextmanager
def serve(env: dict[str, str], log_name: str = "api.log", port: int | None = None) -> Iterator[str]:
    """Run `notifier api` with `env` on `port` (a free loopback one if None); yield its base URL."""
    port = port or free_port()
    log_path = TEST_VAR / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
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

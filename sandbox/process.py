"""Run the sandbox as a child process on free ports (tests, benchmarks, the demo)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from sandbox.app import SandboxConfig
from sandbox.client import SandboxClient
from sandbox.keys import ensure_dev_keys

_LISTENING = re.compile(r"^sandbox (\S+) listening on (\S+)$")


@dataclass
class SandboxProcess:
    """A sandbox child process and what a client needs to reach it."""

    process: subprocess.Popen[str]
    urls: dict[str, str]
    cert_path: Path
    apns_key_path: Path
    config: SandboxConfig
    client: SandboxClient

    @property
    def apns_url(self) -> str:
        return self.urls["apns"]

    @property
    def fcm_url(self) -> str:
        return self.urls["fcm"]

    @property
    def control_url(self) -> str:
        return self.urls["control"]

    def apns_jwt(
        self,
        *,
        iat: int | None = None,
        key_id: str | None = None,
        team_id: str | None = None,
        key_pem: bytes | None = None,
    ) -> str:
        """Sign a provider token the way the notifier does (ES256, kid, iss, iat)."""
        return jwt.encode(
            {"iss": team_id or self.config.apns_team_id, "iat": int(time.time()) if iat is None else iat},
            key_pem or self.apns_key_path.read_bytes(),
            algorithm="ES256",
            headers={"kid": key_id or self.config.apns_key_id},
        )

    def stop(self, timeout_s: float = 10.0) -> int:
        """Send SIGTERM and wait; return the exit code."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox(
    directory: str | os.PathLike[str],
    *,
    timeout_s: float = 20.0,
    log_level: str = "WARNING",
    **overrides: object,
) -> SandboxProcess:
    """Generate keys in directory, start ``python -m sandbox`` on free ports, wait until ready."""
    directory = Path(directory)
    key_path = ensure_dev_keys(directory)
    config = SandboxConfig(
        host="127.0.0.1",
        control_port=0,
        apns_port=0,
        cert_path=directory / "tls-cert.pem",
        apns_key_path=key_path,
        fcm_port=0,
        fcm_token_port=0,
        fcm_credentials_path=directory / "fcm-service-account.json",
        sendgrid_port=0,
        sendgrid_webhook_key_path=directory / "sendgrid_webhook_key.pem",
        sendgrid_webhook_public_key_path=directory / "sendgrid_webhook_public_key",
        twilio_port=0,
        smtp_port=0,
        webpush_port=0,
        vapid_key_path=directory / "vapid_private_key.pem",
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    args = [sys.executable, "-m", "sandbox", "--log-level", log_level]
    for name in config.__dataclass_fields__:
        args += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_SANDBOX_")}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    urls: dict[str, str] = {}
    lines: list[str] = []

    def read_until_ready() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            lines.append(line)
            match = _LISTENING.match(line)
            if match:
                urls[match.group(1)] = match.group(2)
            if line == "sandbox ready":
                return

    reader = threading.Thread(target=read_until_ready, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if "control" not in urls or reader.is_alive() or process.poll() is not None:
        process.kill()
        process.wait()
        raise RuntimeError("sandbox did not start: " + " | ".join(lines))
    # Keep draining stdout so the child never blocks on a full pipe.
    threading.Thread(target=_drain, args=(process,), daemon=True).start()
    return SandboxProcess(process, urls, config.cert_path, key_path, config,
                          SandboxClient(urls["control"], token=config.control_token))


def _drain(process: subprocess.Popen[str]) -> None:
    for _ in process.stdout:  # type: ignore[union-attr]
        pass

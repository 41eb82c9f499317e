"""The sandbox stops quietly (issue 9): no traceback when stopped with connections open."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from notifier import devstack


def _sandbox_args(tmp_path: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "notifier.sandbox", "--cert-path", str(tmp_path / "cert.pem"),
            "--apns-key-path", str(tmp_path / "apns.p8"), "--fcm-credentials-path", str(tmp_path / "fcm.json"),
            "--sendgrid-webhook-key-path", str(tmp_path / "sg.pem"),
            "--sendgrid-webhook-public-key-path", str(tmp_path / "sg.pub")]
    for name in ("control", "apns", "fcm", "fcm-token", "sendgrid", "twilio", "smtp"):
        args += [f"--{name}-port", "0"]
    return args + list(extra)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_SANDBOX_")}


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

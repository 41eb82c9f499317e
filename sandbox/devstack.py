"""Start and stop the local processes of a development stack: sandbox, Celery workers, beat.

Used by the demo, the tests and the benchmark, so all three run the system the same way:
real processes, talking over real sockets.
"""
from __future__ import annotations

import atexit
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Below Linux's ephemeral range (32768-60999): a port chosen here and bound a moment later is
# not handed meanwhile to some outgoing connection, as a port 0 pick can be.
_PORTS = range(20000, 32768)
# A port is picked here and bound later by another process (a sandbox, a worker): between the two,
# a second picker (another test run, the demo, the benchmark) must not take it too. A marker file
# per port, naming the picking process, holds it until that process is gone.
_PICKED = Path(tempfile.gettempdir()) / "notifier-ports"


def free_port() -> int:
    """A TCP port nobody listens on or has picked, on loopback, outside the ephemeral range."""
    _PICKED.mkdir(exist_ok=True)
    for _ in range(200):
        port = random.choice(_PORTS)
        if not _hold(port):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hold(port: int) -> bool:
    """Mark a port as picked by this process; False while a live process holds it."""
    marker = _PICKED / str(port)
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(marker.read_text() or "0")
                age_s = time.time() - marker.stat().st_mtime
            except (OSError, ValueError):
                holder, age_s = 0, 0.0
            if holder == os.getpid() or (holder and Path(f"/proc/{holder}").exists()):
                return False
            if not holder and age_s < 5:
                return False  # being written by its picker this instant
            marker.unlink(missing_ok=True)  # its process is gone: take the port over
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        if not _held:
            atexit.register(_release_held)
        _held.append(marker)
        return True
    return False


_held: list[Path] = []


def _release_held() -> None:
    """At exit: drop this process's markers (a later picker would take them over anyway)."""
    me = str(os.getpid())
    for marker in _held:
        try:
            if marker.read_text() == me:
                marker.unlink()
        except OSError:
            pass


def private_sandbox_env() -> dict[str, str]:
    """Env vars that give this run a sandbox on ports of its own, and point the senders at it.

    Tests, demo and benchmark may run beside each other (or beside a developer's sandbox).
    """
    control, apns = free_port(), free_port()
    fcm, fcm_token = free_port(), free_port()
    return {
        "NOTIFIER_SANDBOX_CONTROL_PORT": str(control),
        "NOTIFIER_SANDBOX_APNS_PORT": str(apns),
        "NOTIFIER_APNS_URL": f"https://127.0.0.1:{apns}",
        # The FCM key file (in NOTIFIER_VAR_DIR unless set) names the token port; the sandbox writes it.
        "NOTIFIER_SANDBOX_FCM_PORT": str(fcm),
        "NOTIFIER_SANDBOX_FCM_TOKEN_PORT": str(fcm_token),
        "NOTIFIER_FCM_URL": f"https://127.0.0.1:{fcm}",
        "NOTIFIER_SANDBOX_WEBPUSH_PORT": str(free_port()),
        **_email_sms_env(),
    }


def _email_sms_env() -> dict[str, str]:
    """SendGrid, Twilio and SMTP on ports of this run's own, with credentials made for this run."""
    sendgrid, twilio, smtp = free_port(), free_port(), free_port()
    return {
        "NOTIFIER_SANDBOX_SENDGRID_PORT": str(sendgrid),
        "NOTIFIER_SANDBOX_TWILIO_PORT": str(twilio),
        "NOTIFIER_SANDBOX_SMTP_PORT": str(smtp),
        "NOTIFIER_SENDGRID_URL": f"http://127.0.0.1:{sendgrid}",
        "NOTIFIER_TWILIO_URL": f"http://127.0.0.1:{twilio}",
        "NOTIFIER_SMTP_HOST": "127.0.0.1",
        "NOTIFIER_SMTP_PORT": str(smtp),
        "NOTIFIER_SENDGRID_API_KEY": "SG." + secrets.token_urlsafe(24),
        "NOTIFIER_TWILIO_AUTH_TOKEN": secrets.token_hex(16),
        "NOTIFIER_SMTP_PASSWORD": secrets.token_urlsafe(16),
    }


def wait_for_port(host: str, port: int, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


def sandbox_env(env: dict[str, str]) -> dict[str, str]:
    """NOTIFIER_SANDBOX_* variables that make the sandbox accept what the notifier configured by `env`
    sends: its key, certificate, credentials and tokens (the Twilio auth token above all)."""
    from notifier.settings import Settings

    settings = Settings(**{k[len("NOTIFIER_"):].lower(): v for k, v in env.items() if k.startswith("NOTIFIER_")
                           and k[len("NOTIFIER_"):].lower() in Settings.model_fields})
    sandbox = {
        "NOTIFIER_SANDBOX_CERT_PATH": settings.apns_ca_file,
        "NOTIFIER_SANDBOX_APNS_KEY_PATH": str(settings.apns_key_path),
        "NOTIFIER_SANDBOX_APNS_KEY_ID": settings.apns_key_id,
        "NOTIFIER_SANDBOX_APNS_TEAM_ID": settings.apns_team_id,
        "NOTIFIER_SANDBOX_APNS_TOPIC": settings.apns_topic,
        "NOTIFIER_SANDBOX_FCM_PROJECT_ID": settings.fcm_project_id,
        "NOTIFIER_SANDBOX_FCM_CREDENTIALS_PATH": str(settings.fcm_credentials_path),
        "NOTIFIER_SANDBOX_APPS_FILE": settings.apps_file,
        "NOTIFIER_SANDBOX_SENDGRID_API_KEY": settings.sendgrid_api_key,
        "NOTIFIER_SANDBOX_SENDGRID_WEBHOOK_KEY_PATH": str(settings.var_dir / "sandbox" / "sendgrid_webhook_key.pem"),
        "NOTIFIER_SANDBOX_SENDGRID_WEBHOOK_PUBLIC_KEY_PATH": str(
            settings.var_dir / "sandbox" / "sendgrid_webhook_public_key"),
        "NOTIFIER_SANDBOX_TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "NOTIFIER_SANDBOX_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "NOTIFIER_SANDBOX_TWILIO_FROM": settings.twilio_from,
        "NOTIFIER_SANDBOX_SMTP_USERNAME": settings.smtp_username,
        "NOTIFIER_SANDBOX_SMTP_PASSWORD": settings.smtp_password,
        "NOTIFIER_SANDBOX_VAPID_KEY_PATH": str(settings.vapid_private_key_file),
    }
    if settings.twilio_messaging_service_sid:
        sandbox["NOTIFIER_SANDBOX_TWILIO_MESSAGING_SERVICE_SID"] = settings.twilio_messaging_service_sid
    if settings.api_public_url:
        sandbox["NOTIFIER_SANDBOX_SENDGRID_EVENT_WEBHOOK_URL"] = (
            settings.api_public_url.rstrip("/") + "/v1/webhooks/sendgrid")
    return {key: value for key, value in sandbox.items() if value}  # empty: the sandbox's own default


def start_sandbox(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `python -m sandbox` and wait until its control, APNs and FCM ports answer."""
    # The sandbox trusts the key and serves the certificate that the senders are configured with.
    env = env | sandbox_env(env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox"],
        env=env, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    host = env.get("NOTIFIER_SANDBOX_HOST", "127.0.0.1")
    try:
        for key, default in (("NOTIFIER_SANDBOX_CONTROL_PORT", 8790), ("NOTIFIER_SANDBOX_APNS_PORT", 8791),
                             ("NOTIFIER_SANDBOX_FCM_TOKEN_PORT", 8793), ("NOTIFIER_SANDBOX_FCM_PORT", 8792),
                             ("NOTIFIER_SANDBOX_SENDGRID_PORT", 8794), ("NOTIFIER_SANDBOX_TWILIO_PORT", 8795),
                             ("NOTIFIER_SANDBOX_SMTP_PORT", 8796), ("NOTIFIER_SANDBOX_WEBPUSH_PORT", 8797)):
            wait_for_port(host, int(env.get(key, default)), proc=proc)
    except BaseException:
        stop(proc)  # never left running by a caller that did not get it
        raise
    return proc


def start_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    queues: tuple[str, ...] | None = None,
    concurrency: int = 2,
    name: str = "worker",
    timeout_s: float = 60.0,
    new_session: bool = False,
    pool: str = "prefork",
    nice: int = 0,
) -> subprocess.Popen:
    """Start a Celery worker process on `queues` and wait until it is ready.

    With new_session, the worker leads its own process group, so a test can kill it whole.
    """
    if queues is None:
        from notifier.queues import QUEUES as queues
    log_path.parent.mkdir(parents=True, exist_ok=True)
    node = f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h"
    proc = subprocess.Popen(
        [
            *(["nice", "-n", str(nice)] if nice else []),
            sys.executable, "-m", "celery", "-A", "tasks.app", "worker",
            "-Q", ",".join(queues), "-c", str(concurrency), "-P", pool, "-n", node,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-E",
        ],
        env=env, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=new_session,
    )
    try:
        wait_for_ready(proc, log_path, timeout_s)
    except BaseException:  # also Ctrl-C while waiting: never left running by a caller that did not get it
        stop(proc)
        raise
    return proc


def start_beat(env: dict[str, str], log_path: Path, schedule_dir: Path) -> subprocess.Popen:
    """Start Celery beat (release of due deliveries, the sweeper)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    schedule_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "--loglevel", "INFO",
         "-s", str(schedule_dir / "celerybeat-schedule")],
        env=env, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    try:
        while b"beat: Starting" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"beat did not start; log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
    except BaseException:
        stop(proc)
        raise
    return proc


def wait_for_ready(proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Block until a Celery worker started with its log at log_path says it is ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}; log:\n{log_path.read_text()[-3000:]}")
        if b" ready." in log_path.read_bytes():
            return
        time.sleep(0.2)
    stop(proc)
    raise TimeoutError(f"worker not ready after {timeout_s:.0f}s; log:\n{log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    """Stop a process politely (SIGTERM), then firmly."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)

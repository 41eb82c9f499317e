"""`notifier dev`: the local loop in one command, on the embedded setup.

Migrates, then starts the sandbox, a worker for every queue, beat, the API and Flower, all sharing
one embedded Redis server that this process starts and one set of credentials (the sandbox accepts
the Twilio token, SendGrid key and SMTP password the workers send; the API trusts the sandbox's
webhook signatures). Prints the URLs and an admin API key; on Ctrl-C or SIGTERM stops the children,
then the embedded Redis, and revokes the key, so nothing is left running.
"""
from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sandbox import devstack


class DevError(ValueError):
    """A reason `notifier dev` cannot start (a port taken, a child that died while starting)."""


def _settings_env(api_port: int, flower_port: int, free_ports: bool) -> dict[str, str]:
    """The NOTIFIER_* variables this run adds to the environment (what the user set wins)."""
    from notifier.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    added: dict[str, str] = {"NOTIFIER_VAR_DIR": str(settings.var_dir.resolve())}  # children run elsewhere
    if free_ports:
        added |= devstack.private_sandbox_env()  # sandbox ports and fresh credentials for this run
    else:
        _check_free([api_port, flower_port, settings.sandbox_control_port, settings.sandbox_apns_port,
                     settings.sandbox_fcm_port, settings.sandbox_fcm_token_port, settings.sandbox_sendgrid_port,
                     settings.sandbox_twilio_port, settings.sandbox_smtp_port])
    api_url = f"http://127.0.0.1:{api_port}"
    var_dir = Path(added["NOTIFIER_VAR_DIR"])
    defaults = {
        # The sandbox refuses every SMS until a token is set; both sides get this one.
        "NOTIFIER_TWILIO_AUTH_TOKEN": secrets.token_hex(16),
        # Twilio status callbacks and SendGrid events from the sandbox come back to this API, signed.
        "NOTIFIER_API_PUBLIC_URL": api_url,
        "NOTIFIER_SENDGRID_WEBHOOK_PUBLIC_KEY_PATH": str(var_dir / "sandbox" / "sendgrid_webhook_public_key"),
        "NOTIFIER_FLOWER_BASIC_AUTH": f"dev:{secrets.token_urlsafe(12)}",
    }
    for key, value in defaults.items():
        if not os.environ.get(key) and key not in added:
            added[key] = value
    return added


def _check_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DevError(f"port {port} is taken (another `notifier dev` or sandbox?): stop it, or run "
                               "`notifier dev --free-ports`") from None


def _write_env_file(path: Path, env: dict[str, str]) -> None:
    """Shell exports that point another terminal's `notifier` commands at this stack."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items()) if key.startswith("NOTIFIER_")]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds credentials
    with os.fdopen(fd, "w") as f:
        f.write("# written by `notifier dev` for this run; source it in another shell: . " + str(path) + "\n")
        f.write("\n".join(lines) + "\n")


def _start(argv: list[str], env: dict[str, str], log_path: Path, port: int) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *argv], env=env, cwd=devstack.ROOT,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    try:
        devstack.wait_for_port("127.0.0.1", port, timeout_s=60, proc=proc)
    except BaseException:
        devstack.stop(proc)
        raise
    return proc


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the loop as Ctrl-C does


def run(*, api_port: int = 8000, flower_port: int = 5555, free_ports: bool = False, concurrency: int = 2) -> int:
    """Run the local loop until interrupted; 0 after a clean stop, 1 if a process died on its own."""
    if free_ports:
        api_port, flower_port = devstack.free_port(), devstack.free_port()
    os.environ.update(_settings_env(api_port, flower_port, free_ports))
    from notifier.accounts import api_keys
    from notifier.settings import get_settings
    from notifier.store import migrate
    from notifier.store.db import database_url
    from notifier.store.redis_conn import broker_url, redis_url, stop_embedded
    from sandbox.keys import ensure_dev_keys

    get_settings.cache_clear()
    settings = get_settings()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    children: list[tuple[str, subprocess.Popen]] = []
    key_prefix = None
    status = 0
    try:
        os.environ.update({
            "NOTIFIER_DATABASE_URL": database_url(),
            "NOTIFIER_REDIS_URL": redis_url(),  # starts the embedded Redis, owned (and stopped) by this process
            "NOTIFIER_BROKER_URL": broker_url(),
        })
        env = dict(os.environ)
        logs = settings.var_dir.resolve() / "logs" / "dev"
        print(f"notifier dev: migrating, then starting sandbox, worker, beat, API and Flower (logs in {logs})",
              flush=True)
        migrate.upgrade()
        ensure_dev_keys(settings.apns_key_path.parent)
        info, key = api_keys.create_key("notifier dev", "admin")
        key_prefix = info.prefix
        starters = {
            "sandbox": lambda: devstack.start_sandbox(env, logs / "sandbox.log"),
            "worker": lambda: devstack.start_worker(env, logs / "worker.log", concurrency=concurrency, name="dev",
                                                    timeout_s=120),
            "beat": lambda: devstack.start_beat(env, logs / "beat.log", settings.var_dir.resolve() / "dev"),
            "api": lambda: _start(["api", "--port", str(api_port)], env, logs / "api.log", api_port),
            "flower": lambda: _start(["flower", "--port", str(flower_port)], env, logs / "flower.log", flower_port),
        }
        for name, start in starters.items():
            try:
                children.append((name, start()))
            except (RuntimeError, TimeoutError) as exc:  # it exited, or never became ready
                raise DevError(f"{name} did not start ({str(exc).splitlines()[0]}); see {logs / (name + '.log')}")
        env_file = settings.var_dir / "dev.env"
        _write_env_file(env_file, env)
        user, _, password = env["NOTIFIER_FLOWER_BASIC_AUTH"].split(",")[0].partition(":")
        print(f"""
  API      http://127.0.0.1:{api_port}   (OpenAPI docs: /docs)
  API key  {key}   (admin scope; revoked when this stops)
  Flower   http://127.0.0.1:{flower_port}   (user {user}, password {password})
  sandbox  {settings.sandbox_control_url}/_sandbox/messages   (what the fake providers accepted)
  logs     {logs}
  another shell:  . {env_file}   then e.g. notifier send '<event JSON>'; notifier status <id>

notifier dev: ready; Ctrl-C stops everything""", flush=True)
        while True:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"notifier dev: {name} exited with {proc.returncode}; see {logs / (name + '.log')}",
                          file=sys.stderr, flush=True)
                    status = 1
                    return status
            time.sleep(0.5)
    except KeyboardInterrupt:
        return status
    finally:
        # Children first (they use the embedded Redis), then the server itself; a second Ctrl-C
        # must not cut this short and leave some of them running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("notifier dev: stopping", flush=True)
        for _, proc in reversed(children):
            devstack.stop(proc)
        if key_prefix:
            api_keys.revoke_key(key_prefix)
        stop_embedded()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("notifier dev: stopped", flush=True)

"""Start the sandbox: one server per provider plus the control API, on one event loop.

Adding a provider (FCM, SendGrid, Twilio, SMTP) means: its handler module beside
``apns.py``, its settings in ``SandboxConfig``, and a starter in ``PROVIDERS``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from notifier.sandbox.apns import STREAMS_BEFORE_AUTH, ApnsSandbox, load_public_key
from notifier.sandbox.control import ControlServer
from notifier.sandbox.h2server import H2Server
from notifier.sandbox.keys import ensure_ec_key
from notifier.sandbox.state import SandboxState
from notifier.sandbox.tls import TlsIdentity

log = logging.getLogger(__name__)

ENV_PREFIX = "NOTIFIER_SANDBOX_"


@dataclass(slots=True)
class SandboxConfig:
    """Where the sandbox listens and which credentials it accepts. Port 0 picks a free port."""

    host: str = "127.0.0.1"
    control_port: int = 8790
    apns_port: int = 8791
    cert_path: Path = Path("var/sandbox/tls-cert.pem")
    apns_key_path: Path = Path("var/sandbox/apns_key.p8")
    apns_key_id: str = "SANDBOXKEY"
    apns_team_id: str = "SANDBOXTEAM"
    apns_topic: str = "com.example.notifier"
    max_records: int = 100_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> SandboxConfig:
        """Read NOTIFIER_SANDBOX_<FIELD> variables (e.g. NOTIFIER_SANDBOX_APNS_PORT); overrides win."""
        config = cls()
        for name in cls.__dataclass_fields__:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                setattr(config, name, _coerce(name, raw, getattr(config, name)))
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, _coerce(name, value, getattr(config, name)))
        return config


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool) or not isinstance(default, (int, Path)):
        return value
    try:
        return type(default)(value)
    except ValueError:
        raise ValueError(f"{name}: expected {type(default).__name__}, got {value!r}") from None


class ProviderServer(Protocol):
    stats: Any

    def reset_stats(self) -> None: ...

    async def close(self) -> None: ...


# name → starter(config, state, tls) returning the running server and its base URL.
ProviderStarter = Callable[[SandboxConfig, SandboxState, TlsIdentity], Awaitable[tuple[ProviderServer, str]]]


async def start_apns(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve the APNs provider API over HTTP/2."""
    key_path = ensure_ec_key(config.apns_key_path)
    apns = ApnsSandbox(
        state,
        public_key=load_public_key(key_path),
        key_id=config.apns_key_id,
        team_id=config.apns_team_id,
        bundle_id=config.apns_topic,
    )
    server = H2Server(
        apns.handle,
        ssl_context=tls.server_context(("h2",)),
        initial_max_concurrent_streams=STREAMS_BEFORE_AUTH,
        goaway_data=b'{"reason":"Shutdown"}',
    )
    port = await server.start(config.host, config.apns_port)
    return server, f"https://{_url_host(config.host)}:{port}"


PROVIDERS: dict[str, ProviderStarter] = {"apns": start_apns}


@dataclass
class Sandbox:
    """A running sandbox: its state, provider servers and control API."""

    config: SandboxConfig
    state: SandboxState
    control: ControlServer
    control_url: str
    servers: dict[str, ProviderServer] = field(default_factory=dict)

    async def close(self) -> None:
        await self.control.close()
        for server in self.servers.values():
            await server.close()


async def start(config: SandboxConfig) -> Sandbox:
    """Start every provider server and the control API on the running loop."""
    tls = TlsIdentity()
    tls.write_ca(config.cert_path)
    state = SandboxState(max_records=config.max_records)
    control = ControlServer(state)
    control_port = await control.start(config.host, config.control_port)
    sandbox = Sandbox(config, state, control, f"http://{_url_host(config.host)}:{control_port}")
    for name, starter in PROVIDERS.items():
        server, url = await starter(config, state, tls)
        sandbox.servers[name] = server
        state.register(name, server, url)
    return sandbox


async def serve(config: SandboxConfig) -> None:
    """Run the sandbox until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_tls_noise)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    sandbox = await start(config)
    for name, url in sandbox.state.endpoints.items():
        print(f"sandbox {name} listening on {url}", flush=True)
    print(f"sandbox control listening on {sandbox.control_url}", flush=True)
    print(f"sandbox clients trust {Path(config.cert_path).resolve()}", flush=True)
    print("sandbox ready", flush=True)
    await stopping.wait()
    log.info("sandbox stopping")
    await sandbox.close()


def run(config: SandboxConfig) -> None:
    """Start the sandbox and block until SIGTERM or SIGINT."""
    asyncio.run(serve(config))


def _quiet_tls_noise(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A client that refuses our certificate, or hangs up mid-handshake, is a client
    # problem the client reports; it is no sandbox error.
    if isinstance(context.get("exception"), (ssl.SSLError, ConnectionError)):
        log.debug("connection failed: %s", context.get("exception"))
        return
    loop.default_exception_handler(context)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

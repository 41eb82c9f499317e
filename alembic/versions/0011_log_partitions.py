"""notification_log partitioned by day (PostgreSQL), dedup keys in idempotency_keys

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-01 10:10:00

PostgreSQL: the plain table is moved into a table partitioned by RANGE (created_at), one
partition per UTC day, in one transaction (create the partitioned table, make a partition for
every day that has rows and for the days ahead, copy the rows, drop the old table, rename, make
the keys and indexes). Fine at this project's sizes; an installation with billions of rows would
copy day by day into attached tables instead (docs/scaling.md). Its primary key becomes
(id, created_at) and the unique key on idempotency_key goes: idempotency_keys holds that
guarantee now, backfilled here from the log.

SQLite (the embedded default) keeps its plain table; it only gains idempotency_keys.
"""
from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa

from notifier.settings import get_settings
from notifier.store import partitions


revision = '0011'
down_revision = '0009'
branch_labels = None
depends_on = None

INDEXES = (
    ('ix_notification_log_notification_id', '(notification_id)'),
    ('ix_notification_log_status_scheduled_at', '(status, scheduled_at)'),
    ('ix_notification_log_provider_message_id', '(provider_message_id)'),
)


def _create_keys() -> None:
    op.create_table('idempotency_keys',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('notification_id', sa.String(length=128), nullable=False),
    sa.Column('delivery_id', sa.BigInteger(), nullable=True),
    sa.Column('fingerprint', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_index('ix_idempotency_keys_notification_id', 'idempotency_keys', ['notification_id'])
    op.create_index('ix_idempotency_keys_created_at', 'idempotency_keys', ['created_at'])


def upgrade() -> None:
    bind = op.get_bind()
    _create_keys()
    postgres = bind.dialect.name == 'postgresql'
    # Every accepted key, with the fingerprint its event was accepted with (whole-event rows have none).
    fingerprint = ("payload->>'fingerprint'" if postgres else "json_extract(payload, '$.fingerprint')")
    op.execute(
        "INSERT INTO idempotency_keys (key, notification_id, delivery_id, fingerprint, created_at) "
        f"SELECT idempotency_key, notification_id, id, CASE WHEN channel <> '-' THEN {fingerprint} END, created_at "
        "FROM notification_log"
    )
    if not postgres:
        return
    op.execute("CREATE TABLE notification_log_new (LIKE notification_log INCLUDING DEFAULTS) "
               "PARTITION BY RANGE (created_at)")
    today = datetime.now(timezone.utc).date()
    first = bind.execute(sa.text("SELECT min(created_at) FROM notification_log")).scalar()
    first_day = min(first.astimezone(timezone.utc).date(), today) if first else today
    day = first_day - timedelta(days=1)
    while day <= today + timedelta(days=get_settings().log_partitions_ahead):
        op.execute(partitions.create_sql(day, parent='notification_log_new'))
        day += timedelta(days=1)
    op.execute("INSERT INTO notification_log_new SELECT * FROM notification_log")
    # The ids go on from the same sequence; detach it first, or dropping the old table drops it.
    op.execute("ALTER SEQUENCE notification_log_id_seq OWNED BY notification_log_new.id")
    op.execute("DROP TABLE notification_log")
    op.execute("ALTER TABLE notification_log_new RENAME TO notification_log")
    op.execute("ALTER TABLE notification_log ADD CONSTRAINT notification_log_pkey PRIMARY KEY (id, created_at)")
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON notification_log {columns}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute("CREATE TABLE notification_log_plain (LIKE notification_log INCLUDING DEFAULTS)")
        op.execute("INSERT INTO notification_log_plain SELECT * FROM notification_log")
        op.execute("ALTER SEQUENCE notification_log_id_seq OWNED BY notification_log_plain.id")
        op.execute("DROP TABLE notification_log")  # and its partitions
        op.execute("ALTER TABLE notification_log_plain RENAME TO notification_log")
        op.execute("ALTER TABLE notification_log ADD CONSTRAINT notification_log_pkey PRIMARY KEY (id)")
        op.execute("ALTER TABLE notification_log ADD CONSTRAINT notification_log_idempotency_key_key "
                   "UNIQUE (idempotency_key)")
        for name, columns in INDEXES:
            op.execute(f"CREATE INDEX {name} ON notification_log {columns}")
    op.drop_index('ix_idempotency_keys_created_at', table_name='idempotency_keys')
    op.drop_index('ix_idempotency_keys_notification_id', table_name='idempotency_keys')
    op.drop_table('idempotency_keys')

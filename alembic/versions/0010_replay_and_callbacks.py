"""replay columns on notification_log, its producer, callback endpoints and their outbox

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-01 09:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0006'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table('notification_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('producer', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('replayed_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('replay_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('replays', sa.Integer(), server_default='0', nullable=False))
    op.create_table(
        'callback_endpoints',
        sa.Column('producer', sa.String(length=80), primary_key=True),
        sa.Column('url', sa.String(length=2048), nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        'callback_outbox',
        sa.Column('id', BigId, primary_key=True, autoincrement=True),
        sa.Column('producer', sa.String(length=80), nullable=False),
        sa.Column('delivery_id', sa.BigInteger(), nullable=False),
        sa.Column('notification_id', sa.String(length=128), nullable=False),
        sa.Column('user_id', sa.String(length=128), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('replays', sa.Integer(), server_default='0', nullable=False),
        sa.Column('occurred_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('given_up_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ux_callback_outbox_event', 'callback_outbox', ['delivery_id', 'status', 'replays'], unique=True)
    op.create_index('ix_callback_outbox_due', 'callback_outbox', ['given_up_at', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_callback_outbox_due', table_name='callback_outbox')
    op.drop_index('ux_callback_outbox_event', table_name='callback_outbox')
    op.drop_table('callback_outbox')
    op.drop_table('callback_endpoints')
    with op.batch_alter_table('notification_log', schema=None) as batch_op:
        batch_op.drop_column('replays')
        batch_op.drop_column('replay_reason')
        batch_op.drop_column('replayed_by')
        batch_op.drop_column('replayed_at')
        batch_op.drop_column('producer')

"""digest windows and their members

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01 09:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('digest_windows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('notification_id', sa.String(length=128), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closes_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('notification_id'),
    sa.UniqueConstraint('user_id', 'category', 'channel', name='uq_digest_windows_user_category_channel'),
    sqlite_autoincrement=True,
    )
    op.create_index('ix_digest_windows_closes_at', 'digest_windows', ['closes_at'], unique=False)
    op.create_table('digest_members',
    sa.Column('window_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('delivery_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['window_id'], ['digest_windows.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('window_id', 'delivery_id')
    )


def downgrade() -> None:
    op.drop_table('digest_members')
    op.drop_index('ix_digest_windows_closes_at', table_name='digest_windows')
    op.drop_table('digest_windows')

"""keep a browser's Push API subscription keys beside its endpoint (the device token)

Revision ID: 0007
Revises: 0010
Create Date: 2026-12-01 09:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('device_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('web_push_keys', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('device_tokens', schema=None) as batch_op:
        batch_op.drop_column('web_push_keys')

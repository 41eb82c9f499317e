"""count the sweeper's re-drives of each delivery

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 06:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redrives', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('notification_log', schema=None) as batch_op:
        batch_op.drop_column('redrives')

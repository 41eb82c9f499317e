"""keep the id of the Celery task that last handled each delivery

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row (PostgreSQL), and rows written before it or
    # outside a task (the producer's intake, the API's webhooks) simply have none.
    with op.batch_alter_table('notification_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_id', sa.String(length=155), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification_log', schema=None) as batch_op:
        batch_op.drop_column('task_id')

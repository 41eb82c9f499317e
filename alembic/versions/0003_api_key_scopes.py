"""api keys hold a set of scopes instead of one role

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 06:40:00

A `producer` key could send, read status, manage devices and preferences, and read every
user's email and phone. It becomes `send,status,users`: the same operations, except that
contact details now need `contacts` of their own (the finding this closes: a key that only
sends could read anybody's address). Nothing is widened. `admin` stays `admin` (all).
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

UP = {"producer": "send,status,users", "admin": "admin"}


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scopes', sa.String(length=128), nullable=True))
    keys = sa.table('api_keys', sa.column('scope', sa.String), sa.column('scopes', sa.String))
    for old, new in UP.items():
        op.execute(keys.update().where(keys.c.scope == old).values(scopes=new))
    # An unknown role gets no scope at all rather than a guess.
    op.execute(keys.update().where(keys.c.scopes.is_(None)).values(scopes=''))
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('scopes', existing_type=sa.String(length=128), nullable=False)
        batch_op.drop_column('scope')


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=16), nullable=True))
    keys = sa.table('api_keys', sa.column('scope', sa.String), sa.column('scopes', sa.String))
    # admin stays admin; a key holding what producer meant (send, status, users) goes back to
    # producer; any narrower key gets no role (refused) rather than a wider one.
    op.execute(keys.update().where(keys.c.scopes.like('%admin%')).values(scope='admin'))
    op.execute(keys.update().where(
        keys.c.scope.is_(None), keys.c.scopes.like('%send%'), keys.c.scopes.like('%status%'),
        keys.c.scopes.like('%users%'),
    ).values(scope='producer'))
    op.execute(keys.update().where(keys.c.scope.is_(None)).values(scope=''))
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('scope', existing_type=sa.String(length=16), nullable=False)
        batch_op.drop_column('scopes')

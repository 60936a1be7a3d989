"""worker registry

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 21:06:19.099403
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('worker',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=True),
    sa.Column('queues', sa.JSON(), nullable=False),
    sa.Column('gpus', sa.JSON(), nullable=False),
    sa.Column('current_job_id', sa.Uuid(), nullable=True),
    sa.Column('stats', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_worker'))
    )


def downgrade() -> None:
    op.drop_table('worker')

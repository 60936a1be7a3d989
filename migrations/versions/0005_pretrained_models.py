"""pretrained models

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 21:18:53.002046
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pretrained_model',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('owner_id', sa.Uuid(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('network', sa.JSON(), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=False),
    sa.Column('image_width', sa.Integer(), nullable=False),
    sa.Column('image_height', sa.Integer(), nullable=False),
    sa.Column('image_channels', sa.Integer(), nullable=False),
    sa.Column('resize_mode', sa.String(length=16), nullable=False),
    sa.Column('info', sa.JSON(), nullable=False),
    sa.Column('source_job_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['user_account.id'], name=op.f('fk_pretrained_model_owner_id_user_account'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pretrained_model'))
    )
    with op.batch_alter_table('pretrained_model', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pretrained_model_owner_id'), ['owner_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('pretrained_model', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pretrained_model_owner_id'))

    op.drop_table('pretrained_model')

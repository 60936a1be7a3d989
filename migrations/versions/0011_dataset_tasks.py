"""dataset tasks: detection and segmentation beside classification

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 11:00:00

`task` says what a dataset's labels are (every earlier dataset is a classification one);
`annotation_format` the detection format its boxes were read from; `split_images` the images
per split, since for detection and segmentation `counts` are boxes or pixels per class.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("task", sa.String(length=16), nullable=False, server_default="classification")
        )
        batch_op.add_column(sa.Column("annotation_format", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("split_images", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.drop_column("split_images")
        batch_op.drop_column("annotation_format")
        batch_op.drop_column("task")

"""tuning studies: the study table, trials as jobs, and a schema of its own for Optuna

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00

A study's trials are ordinary training jobs (`job.study_id`, `job.trial_number`, one job per
trial). Optuna keeps its own tables and its own Alembic version table: on PostgreSQL they live
in the `optuna` schema created here (digits' `alembic_version` is in the default schema, so
the two histories never meet); on SQLite Optuna writes a journal file instead.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPTUNA_SCHEMA = "optuna"


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("dataset_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("group_name", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("optuna_name", sa.String(length=200), nullable=False),
        sa.Column("trials_asked", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user_account.id"],
            name=op.f("fk_study_owner_id_user_account"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name=op.f("fk_study_dataset_id_dataset"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study")),
    )
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_status"), ["status"], unique=False)
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_study_id"), ["study_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_job_study_id_study"), "study", ["study_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_job_study_id"), ["study_id", "trial_number"]
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Optuna's tables and its own version table go with it
        op.execute(f"DROP SCHEMA IF EXISTS {OPTUNA_SCHEMA} CASCADE")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_job_study_id"), type_="unique")
        batch_op.drop_constraint(batch_op.f("fk_job_study_id_study"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_job_study_id"))
        batch_op.drop_column("trial_number")
        batch_op.drop_column("study_id")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_status"))
        batch_op.drop_index(batch_op.f("ix_study_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_study_owner_id"))
    op.drop_table("study")

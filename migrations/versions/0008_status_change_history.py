"""one lifecycle: a status-change table is the history; dataset leases and abort flags

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00

The JSON `status_history` columns of job and dataset, and the `status` rows of job_event,
become rows of `status_change` (one append-only history for both kinds of queued work).
Datasets gain the lease (`heartbeat_at`) and the abort flag jobs have; both gain
`delete_requested` (a DELETE of running work hides it at once, its worker removes it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(raw: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None


def _history(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    return [entry for entry in raw or [] if isinstance(entry, dict) and entry.get("status")]


def upgrade() -> None:
    op.create_table(
        "status_change",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_status_change")),
    )
    op.create_index(
        "ix_status_change_subject_id_id", "status_change", ["subject_id", "id"], unique=False
    )
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.add_column(
            sa.Column("abort_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("delete_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(
            sa.Column("delete_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    conn = op.get_bind()
    change = sa.table(
        "status_change",
        sa.column("subject", sa.String),
        sa.column("subject_id", sa.Uuid),
        sa.column("from_status", sa.String),
        sa.column("to_status", sa.String),
        sa.column("reason", sa.Text),
        sa.column("worker", sa.String),
        sa.column("at", sa.DateTime(timezone=True)),
    )
    for subject, table in (("job", "job"), ("dataset", "dataset")):
        rows = conn.execute(sa.text(f"SELECT id, status_history, created_at FROM {table}"))
        inserts: list[dict[str, Any]] = []
        for row_id, raw, created in rows:
            previous = None
            for entry in _history(raw):
                inserts.append(
                    {
                        "subject": subject,
                        "subject_id": row_id if isinstance(row_id, uuid.UUID) else uuid.UUID(
                            str(row_id)
                        ),
                        "from_status": previous,
                        "to_status": entry["status"],
                        "reason": entry.get("reason"),
                        "worker": entry.get("worker"),
                        "at": _when(entry.get("at")) or created,
                    }
                )
                previous = entry["status"]
        if inserts:
            op.bulk_insert(change, inserts)
    conn.execute(sa.text("DELETE FROM job_event WHERE kind = 'status'"))
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.drop_column("status_history")
    with op.batch_alter_table("job") as batch_op:
        batch_op.drop_column("status_history")


def downgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("status_history", sa.JSON(), nullable=True))
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.add_column(sa.Column("status_history", sa.JSON(), nullable=True))
    conn = op.get_bind()
    histories: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for subject, subject_id, to_status, reason, worker, at in conn.execute(
        sa.text(
            "SELECT subject, subject_id, to_status, reason, worker, at FROM status_change "
            "ORDER BY id"
        )
    ):
        entry: dict[str, Any] = {"status": to_status, "at": str(at)}
        if reason:
            entry["reason"] = reason
        if worker:
            entry["worker"] = worker
        histories.setdefault((subject, str(subject_id)), []).append(entry)
    for table in ("job", "dataset"):
        for (row_id,) in conn.execute(sa.text(f"SELECT id FROM {table}")):
            history = histories.get((table, str(row_id)), [])
            conn.execute(
                sa.text(f"UPDATE {table} SET status_history = :h WHERE id = :id"),
                {"h": json.dumps(history), "id": row_id},
            )
    with op.batch_alter_table("job") as batch_op:
        batch_op.alter_column("status_history", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("delete_requested")
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.alter_column("status_history", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("delete_requested")
        batch_op.drop_column("abort_requested")
    op.drop_index("ix_status_change_subject_id_id", table_name="status_change")
    op.drop_table("status_change")

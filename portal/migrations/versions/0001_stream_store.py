"""the stream store: organisations, API keys, data streams, status, delivery counts

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-03 15:52:02.144757
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("organisations",
    sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("created_at", sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_table("api_keys",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("prefix", sa.String(length=16), nullable=False),
    sa.Column("key_hash", sa.String(length=64), nullable=False),
    sa.Column("organisation_id", sa.BigInteger(), nullable=True),
    sa.Column("name", sa.String(length=100), nullable=False),
    sa.Column("created_at", sa.String(length=40), nullable=False),
    sa.Column("revoked_at", sa.String(length=40), nullable=True),
    sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("prefix")
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_organisation_id"), ["organisation_id"], unique=False)

    op.create_table("data_streams",
    sa.Column("id", sa.String(length=128), nullable=False),
    sa.Column("organisation_id", sa.BigInteger(), nullable=False),
    sa.Column("stream_type", sa.String(length=10), nullable=False),
    sa.Column("api_type", sa.String(length=20), nullable=False),
    sa.Column("state", sa.String(length=12), nullable=False),
    sa.Column("historic_data", sa.Boolean(), nullable=False),
    sa.Column("config", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.String(length=40), nullable=False),
    sa.Column("updated_at", sa.String(length=40), nullable=False),
    sa.Column("resumed_at", sa.String(length=40), nullable=True),
    sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("data_streams", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_streams_organisation_id"), ["organisation_id"], unique=False)

    op.create_table("delivery_counts",
    sa.Column("stream_id", sa.String(length=128), nullable=False),
    sa.Column("hour", sa.String(length=40), nullable=False),
    sa.Column("delivered", sa.BigInteger(), nullable=False),
    sa.Column("parked", sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(["stream_id"], ["data_streams.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("stream_id", "hour")
    )
    op.create_table("history_delivered",
    sa.Column("stream_id", sa.String(length=128), nullable=False),
    sa.Column("delivered_at", sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(["stream_id"], ["data_streams.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("stream_id")
    )
    op.create_table("recent_deliveries",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("stream_id", sa.String(length=128), nullable=False),
    sa.Column("started_at", sa.String(length=40), nullable=False),
    sa.Column("status", sa.String(length=20), nullable=False),
    sa.Column("remote_status", sa.String(length=64), nullable=True),
    sa.Column("documents", sa.Integer(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["stream_id"], ["data_streams.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("recent_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recent_deliveries_stream_id"), ["stream_id"], unique=False)

    op.create_table("stream_status",
    sa.Column("stream_id", sa.String(length=128), nullable=False),
    sa.Column("state", sa.String(length=12), nullable=False),
    sa.Column("error", sa.String(length=40), nullable=True),
    sa.Column("last_success_at", sa.String(length=40), nullable=True),
    sa.Column("last_remote_status", sa.String(length=64), nullable=True),
    sa.Column("consecutive_failures", sa.Integer(), nullable=False),
    sa.Column("circuit", sa.String(length=12), nullable=False),
    sa.Column("next_probe_at", sa.String(length=40), nullable=True),
    sa.Column("updated_at", sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(["stream_id"], ["data_streams.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("stream_id")
    )


def downgrade() -> None:
    op.drop_table("stream_status")
    with op.batch_alter_table("recent_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recent_deliveries_stream_id"))

    op.drop_table("recent_deliveries")
    op.drop_table("history_delivered")
    op.drop_table("delivery_counts")
    with op.batch_alter_table("data_streams", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_streams_organisation_id"))

    op.drop_table("data_streams")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_organisation_id"))

    op.drop_table("api_keys")
    op.drop_table("organisations")

"""The operator console: operators, an issue's pause flag and frozen counts, the date a
subscriber bounced, and indexes for the dashboard's daily growth.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from newsletter.db.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

GROWTH = ("created_at", "confirmed_at", "unsubscribed_at", "bounced_at")


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_login_at", UTCDateTime()),
    )
    op.add_column("issues", sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("issues", sa.Column("counts", sa.JSON))
    op.add_column("subscribers", sa.Column("bounced_at", UTCDateTime()))
    for column in GROWTH:
        op.create_index(f"ix_subscribers_{column}", "subscribers", [column])


def downgrade() -> None:
    for column in GROWTH:
        op.drop_index(f"ix_subscribers_{column}", "subscribers")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("bounced_at")
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("counts")
        batch.drop_column("paused")
    op.drop_table("operators")

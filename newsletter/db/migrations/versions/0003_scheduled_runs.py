"""The record of scheduled runs: one row per cron fire time, claimed by the scheduler that runs it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from newsletter.db.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduled_runs",
        sa.Column("scheduled_for", UTCDateTime(), primary_key=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("issue_id", sa.Integer),
        sa.Column("outcome", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("scheduled_runs")

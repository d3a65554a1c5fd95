"""Bounce processing: the mails read from the bounce mailbox and the events found in them; the
issue each unsubscribe counts against.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from newsletter.db.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_mails",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("read_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_bounce_mails_source", "bounce_mails", ["source"])
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mail_id", sa.Integer, sa.ForeignKey("bounce_mails.id"), nullable=False),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id")),
        sa.Column("issue_id", sa.Integer),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_bounce_events_subscriber", "bounce_events", ["subscriber_id", "kind", "created_at"])
    op.create_index("ix_bounce_events_issue", "bounce_events", ["issue_id", "kind"])
    op.add_column("subscribers", sa.Column("unsubscribed_issue_id", sa.Integer))
    op.create_index("ix_subscribers_unsubscribed_issue", "subscribers", ["unsubscribed_issue_id"])


def downgrade() -> None:
    op.drop_index("ix_subscribers_unsubscribed_issue", "subscribers")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("unsubscribed_issue_id")
    op.drop_table("bounce_events")
    op.drop_table("bounce_mails")

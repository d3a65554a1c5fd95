"""The initial schema: subscribers, issues, stories, deliveries, feed states.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from newsletter.db.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("consent_ip", sa.String(64)),
        sa.Column("bounce_count", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("confirmed_at", UTCDateTime()),
        sa.Column("unsubscribed_at", UTCDateTime()),
        sa.Column("confirm_sent_at", UTCDateTime()),
    )
    op.create_index("ix_subscribers_status_id", "subscribers", ["status", "id"])
    op.create_table(
        "issues",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_date", sa.Date, nullable=False, unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("preheader", sa.Text, nullable=False),
        sa.Column("html", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("story_count", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime()),
    )
    op.create_table(
        "stories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("identity", sa.String(512), nullable=False, unique=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("link", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("bullets", sa.JSON, nullable=False),
        sa.Column("author", sa.String(200)),
        sa.Column("image", sa.Text),
        sa.Column("section", sa.String(200), nullable=False),
        sa.Column("published_at", UTCDateTime()),
        sa.Column("fetched_at", UTCDateTime(), nullable=False),
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id")),
    )
    op.create_index("ix_stories_issue_fetched", "stories", ["issue_id", "fetched_at"])
    op.create_table(
        "deliveries",
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), primary_key=True),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id"), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("last_reply", sa.Text),
        sa.Column("sent_at", UTCDateTime()),
    )
    op.create_index("ix_deliveries_issue_status", "deliveries", ["issue_id", "status", "subscriber_id"])
    op.create_table(
        "feed_states",
        sa.Column("url", sa.String(1000), primary_key=True),
        sa.Column("etag", sa.Text),
        sa.Column("last_modified", sa.Text),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("feed_states")
    op.drop_table("deliveries")
    op.drop_table("stories")
    op.drop_table("issues")
    op.drop_table("subscribers")

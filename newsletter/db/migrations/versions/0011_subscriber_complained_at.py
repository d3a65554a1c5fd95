"""When a complaint closed an address, as `bounced_at` says for a bounce: the signup form's
confirmation may reopen a closed address only when it was sent after the closing. An address that
complained before takes the time of its last complaint on record.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from newsletter.db.models import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("complained_at", UTCDateTime()))
    op.execute(
        "UPDATE subscribers SET complained_at = (SELECT max(e.created_at) FROM bounce_events AS e "
        "WHERE e.subscriber_id = subscribers.id AND e.kind = 'complaint') WHERE status = 'complained'"
    )


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("complained_at")

"""What named a bounce event's subscriber: our VERP address, or only an unsubscribe link (which
may at most unsubscribe them). Events recorded before were all taken as VERP's.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bounce_events") as batch:
        batch.add_column(sa.Column("signed_by", sa.String(8), nullable=False, server_default=""))
    op.execute("UPDATE bounce_events SET signed_by = 'verp' WHERE subscriber_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("bounce_events") as batch:
        batch.drop_column("signed_by")

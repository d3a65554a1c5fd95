"""A tidy list (SPEC 10): when a pending signup was reminded (one reminder, never a second) and
when a reader was welcomed (one welcome mail).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-20
"""

import sqlalchemy as sa
from alembic import op

from newsletter.db.models import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("reminded_at", UTCDateTime()))
    op.add_column("subscribers", sa.Column("welcomed_at", UTCDateTime()))
    # readers confirmed before there were welcome mails count as welcomed: none is sent late
    op.execute("UPDATE subscribers SET welcomed_at = confirmed_at WHERE confirmed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("welcomed_at")
        batch.drop_column("reminded_at")

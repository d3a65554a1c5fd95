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
    # SQLite rebuilds the table to drop a column, and a rebuilt table has lost its triggers (the
    # subscriber and preference tallies', migrations 0006 and 0014): they are made again as they were
    bind = op.get_bind()
    triggers: list[str] = []
    if bind.dialect.name == "sqlite":
        triggers = list(
            bind.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'subscribers'")
            ).scalars()
        )
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("welcomed_at")
        batch.drop_column("reminded_at")
    for sql in triggers:
        op.execute(sql)

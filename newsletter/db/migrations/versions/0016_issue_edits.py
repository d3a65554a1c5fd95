"""The editor's hour (SPEC 9): an issue's edits are records of their own (`issue_edits`: who,
when, what); an issue keeps the items an editor dropped, the subject and intro they wrote, whether
it is held, a version raised by every edit of what it tells, and the review notes mailed.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-15
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs, each with a default: no copy of the issues table
    op.add_column("issues", sa.Column("dropped", sa.JSON()))
    op.add_column("issues", sa.Column("chosen_subject", sa.Text))
    op.add_column("issues", sa.Column("intro", sa.Text, nullable=False, server_default=""))
    op.add_column("issues", sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("issues", sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    op.add_column("issues", sa.Column("review_notes", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "issue_edits",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_issue_edits_issue", "issue_edits", ["issue_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_issue_edits_issue", "issue_edits")
    op.drop_table("issue_edits")
    with op.batch_alter_table("issues") as batch:
        for column in ("review_notes", "version", "held", "intro", "chosen_subject", "dropped"):
            batch.drop_column(column)

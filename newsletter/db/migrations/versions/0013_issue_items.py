"""An issue's items: its stories grouped by event (clusters) in reading order. Issues built before
keep NULL: each of their stories is an item of its own.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("issues", sa.Column("items", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("items")

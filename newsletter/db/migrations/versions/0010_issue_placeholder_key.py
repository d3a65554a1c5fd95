"""An issue's placeholder key: the random word in the names of its per-reader placeholders, so
no feed's text can spell them. Issues stored before keep NULL, and with it the fixed names.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("issues", sa.Column("placeholder_key", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("placeholder_key")

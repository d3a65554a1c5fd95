"""A story's sentence vector (content.embed), made when it is stored. Stories stored before keep
NULL until the build fills the ones it considers.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stories", sa.Column("embedding", sa.LargeBinary()))


def downgrade() -> None:
    with op.batch_alter_table("stories") as batch:
        batch.drop_column("embedding")

"""Editions and variants (SPEC 8). An issue is one per (date, edition): every issue built before
is the `daily` one of its date. A variant is one rendering of an issue for one set of sections its
audience holds; a delivery names its variant (NULL: the issue's own rendering, every section), so
every delivery made before keeps what it had.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# SQLite keeps 0001's `UNIQUE (issue_date)` without a name: batch mode names it by this convention
_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _drop_date_unique(batch: object) -> None:
    """0001's UNIQUE (issue_date), by the name it has: PostgreSQL's own (issues_issue_date_key),
    the one a downgrade gave it, or, on SQLite where it has none, the convention's."""
    found = [
        u["name"]
        for u in sa.inspect(op.get_bind()).get_unique_constraints("issues")
        if u["column_names"] == ["issue_date"]
    ]
    batch.drop_constraint(found[0] if found and found[0] else "uq_issues_issue_date", type_="unique")  # type: ignore[attr-defined]


def upgrade() -> None:
    with op.batch_alter_table("issues", naming_convention=_NAMES) as batch:
        batch.add_column(sa.Column("edition", sa.String(16), nullable=False, server_default="daily"))
        _drop_date_unique(batch)
        batch.create_unique_constraint("uq_issues_date_edition", ["issue_date", "edition"])
    op.create_table(
        "issue_variants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), nullable=False),
        sa.Column("sections", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("preheader", sa.Text, nullable=False),
        sa.Column("html", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("story_count", sa.Integer, nullable=False),
        sa.Column("placeholder_key", sa.String(64)),
        sa.UniqueConstraint("issue_id", "sections", name="uq_issue_variants_sections"),
    )
    # a plain ADD COLUMN: no copy of a table that may hold millions of rows (nor of its triggers);
    # SQLite takes a REFERENCES clause there, which alembic would only write as a separate ALTER
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE deliveries ADD COLUMN variant_id INTEGER REFERENCES issue_variants (id)")
    else:
        op.add_column("deliveries", sa.Column("variant_id", sa.Integer, sa.ForeignKey("issue_variants.id")))


def downgrade() -> None:
    bind = op.get_bind()
    weekly = bind.execute(sa.text("SELECT count(*) FROM issues WHERE edition <> 'daily'")).scalar()
    if weekly:  # before anything changes
        raise RuntimeError(f"{weekly} weekly issues would lose their date's one place: delete them first")
    # SQLite rebuilds the table to drop a column, and a rebuilt table has lost its triggers (the
    # delivery tally's, migration 0007): they are made again as they were
    triggers: Sequence[str] = []
    if bind.dialect.name == "sqlite":
        triggers = (
            bind.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'deliveries'")
            )
            .scalars()
            .all()
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("variant_id")
    for sql in triggers:
        op.execute(sql)
    op.drop_table("issue_variants")
    with op.batch_alter_table("issues") as batch:
        batch.drop_constraint("uq_issues_date_edition", type_="unique")
        batch.drop_column("edition")
        batch.create_unique_constraint("uq_issues_issue_date", ["issue_date"])

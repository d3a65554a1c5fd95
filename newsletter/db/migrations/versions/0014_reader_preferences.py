"""What each reader chose: how often (`daily`, `weekly`) and which sections (a JSON list; `[]` is
every section). Every reader already on the list gets every section, daily. And a tally of
subscribers by status and choice, kept by triggers, so the dashboard counts readers per section
and frequency from a few rows, never over a million.

On PostgreSQL every change to the tally first locks the subscriber tally's one row (migration
0006), which a new subscriber or a change of status locks anyway: so writers of this tally take
its rows one transaction at a time, in no order that can deadlock.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

KEY = ("status", "frequency", "sections")


def _match(row: str) -> str:
    return " AND ".join(f"{k} = {row}.{k}" for k in KEY)


def _add(row: str) -> str:
    return (
        f"INSERT INTO preference_tally (status, frequency, sections, n) "
        f"VALUES ({row}.status, {row}.frequency, {row}.sections, 1) "
        "ON CONFLICT (status, frequency, sections) DO UPDATE SET n = preference_tally.n + 1;"
    )


def _remove(row: str) -> str:
    return f"UPDATE preference_tally SET n = n - 1 WHERE {_match(row)};"


CHANGED = " OR ".join(f"OLD.{k} IS DISTINCT FROM NEW.{k}" for k in KEY)


def upgrade() -> None:
    op.add_column(
        "subscribers", sa.Column("frequency", sa.String(16), nullable=False, server_default="daily")
    )
    op.add_column("subscribers", sa.Column("sections", sa.Text(), nullable=False, server_default="[]"))
    op.create_table(
        "preference_tally",
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("frequency", sa.String(16), primary_key=True),
        sa.Column("sections", sa.Text(), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False, server_default="0"),
    )
    op.execute(
        "INSERT INTO preference_tally (status, frequency, sections, n) "
        "SELECT status, frequency, sections, count(*) FROM subscribers GROUP BY status, frequency, sections"
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"CREATE TRIGGER preference_tally_insert AFTER INSERT ON subscribers BEGIN {_add('NEW')} END"
        )
        op.execute(
            "CREATE TRIGGER preference_tally_update AFTER UPDATE OF status, frequency, sections "
            f"ON subscribers WHEN {CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} "
            f"BEGIN {_remove('OLD')} {_add('NEW')} END"
        )
        op.execute(
            f"CREATE TRIGGER preference_tally_delete AFTER DELETE ON subscribers BEGIN {_remove('OLD')} END"
        )
        return
    op.execute(
        "CREATE FUNCTION preference_tally_track() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "PERFORM 1 FROM subscriber_tally WHERE id = 1 FOR NO KEY UPDATE; "
        f"IF TG_OP <> 'INSERT' THEN {_remove('OLD')} END IF; "
        f"IF TG_OP <> 'DELETE' THEN {_add('NEW')} END IF; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE FUNCTION preference_tally_reset() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "DELETE FROM preference_tally; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER preference_tally_insert_delete AFTER INSERT OR DELETE ON subscribers "
        "FOR EACH ROW EXECUTE FUNCTION preference_tally_track()"
    )
    op.execute(
        "CREATE TRIGGER preference_tally_update AFTER UPDATE OF status, frequency, sections ON subscribers "
        f"FOR EACH ROW WHEN ({CHANGED}) EXECUTE FUNCTION preference_tally_track()"
    )
    op.execute(
        "CREATE TRIGGER preference_tally_truncate AFTER TRUNCATE ON subscribers "
        "FOR EACH STATEMENT EXECUTE FUNCTION preference_tally_reset()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER preference_tally_{name}")
    else:
        for name in ("insert_delete", "update", "truncate"):
            op.execute(f"DROP TRIGGER preference_tally_{name} ON subscribers")
        op.execute("DROP FUNCTION preference_tally_track()")
        op.execute("DROP FUNCTION preference_tally_reset()")
    op.drop_table("preference_tally")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("sections")
        batch.drop_column("frequency")

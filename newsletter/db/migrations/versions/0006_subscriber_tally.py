"""Subscribers by status kept in one row by triggers, so the dashboard and `status` read five
numbers instead of counting a million rows. One row, not one per status: a trigger then takes a
single row lock, so concurrent transactions on PostgreSQL queue on it and never deadlock. A new
subscriber status needs a column here and in its triggers.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")


def _shift(row: str, sign: str) -> str:
    """SQLite's SET list `col = col + (ROW.status = 'col')` for every status (a comparison is 0 or 1)."""
    return ", ".join(f"{s} = {s} {sign} ({row}.status = '{s}')" for s in STATUSES)


def upgrade() -> None:
    op.create_table(
        "subscriber_tally",
        sa.Column("id", sa.Integer, primary_key=True),
        *(sa.Column(s, sa.Integer, nullable=False, server_default="0") for s in STATUSES),
    )
    sums = ", ".join(f"coalesce(sum(CASE WHEN status = '{s}' THEN 1 ELSE 0 END), 0)" for s in STATUSES)
    op.execute(f"INSERT INTO subscriber_tally (id, {', '.join(STATUSES)}) SELECT 1, {sums} FROM subscribers")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER subscriber_tally_insert AFTER INSERT ON subscribers BEGIN "
            f"UPDATE subscriber_tally SET {_shift('NEW', '+')} WHERE id = 1; END"
        )
        op.execute(
            "CREATE TRIGGER subscriber_tally_update AFTER UPDATE OF status ON subscribers "
            "WHEN OLD.status IS NOT NEW.status BEGIN "
            f"UPDATE subscriber_tally SET {_shift('OLD', '-')} WHERE id = 1; "
            f"UPDATE subscriber_tally SET {_shift('NEW', '+')} WHERE id = 1; END"
        )
        op.execute(
            "CREATE TRIGGER subscriber_tally_delete AFTER DELETE ON subscribers BEGIN "
            f"UPDATE subscriber_tally SET {_shift('OLD', '-')} WHERE id = 1; END"
        )
        return
    both = ", ".join(
        f"{s} = {s} - (TG_OP <> 'INSERT' AND OLD.status = '{s}')::int "
        f"+ (TG_OP <> 'DELETE' AND NEW.status = '{s}')::int"
        for s in STATUSES
    )
    op.execute(
        "CREATE FUNCTION subscriber_tally_track() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"UPDATE subscriber_tally SET {both} WHERE id = 1; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE FUNCTION subscriber_tally_reset() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"UPDATE subscriber_tally SET {', '.join(f'{s} = 0' for s in STATUSES)} WHERE id = 1; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER subscriber_tally_insert_delete AFTER INSERT OR DELETE ON subscribers "
        "FOR EACH ROW EXECUTE FUNCTION subscriber_tally_track()"
    )
    op.execute(
        "CREATE TRIGGER subscriber_tally_update AFTER UPDATE OF status ON subscribers FOR EACH ROW "
        "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION subscriber_tally_track()"
    )
    op.execute(
        "CREATE TRIGGER subscriber_tally_truncate AFTER TRUNCATE ON subscribers "
        "FOR EACH STATEMENT EXECUTE FUNCTION subscriber_tally_reset()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER subscriber_tally_{name}")
    else:
        for name in ("insert_delete", "update", "truncate"):
            op.execute(f"DROP TRIGGER subscriber_tally_{name} ON subscribers")
        op.execute("DROP FUNCTION subscriber_tally_track()")
        op.execute("DROP FUNCTION subscriber_tally_reset()")
    op.drop_table("subscriber_tally")

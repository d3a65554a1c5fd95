"""Deliveries by state per issue kept by triggers, so an issue's live counts (the dashboard, the
issue page, `status`, the end of a send) read a few rows instead of counting a million.

Each row is a share of one issue's counts; the counts are the sum over its rows. A change made by
a sender (from pending, sending or deferred) goes to that sender's own row (`claimed_by`), so
senders on PostgreSQL never wait for each other's locks; every other change (rows made at the
start of a send, a bounce read later, unknown rows requeued) goes to the row with shard ''. A
sender's transaction thus locks only its own row, and nobody else's transaction locks it: no
lock cycle, no deadlock. A new delivery state needs a column here and in its triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STATES = ("pending", "sending", "sent", "deferred", "failed", "bounced", "unknown", "skipped")
COLUMNS = ", ".join(STATES)
ADD = ", ".join(f"{s} = delivery_tally.{s} + excluded.{s}" for s in STATES)
UPSERT = f"ON CONFLICT (issue_id, shard) DO UPDATE SET {ADD}"
BY_SENDER = (
    "CASE WHEN OLD.status IN ('pending', 'sending', 'deferred') "
    "THEN coalesce(NEW.claimed_by, OLD.claimed_by, '') ELSE '' END"
)


def _is(row: str, state: str, cast: str) -> str:
    return f"({row}.status = '{state}'){cast}"


def upgrade() -> None:
    op.create_table(
        "delivery_tally",
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), primary_key=True),
        sa.Column("shard", sa.String(36), primary_key=True),
        *(sa.Column(s, sa.Integer, nullable=False, server_default="0") for s in STATES),
    )
    sums = ", ".join(f"sum(CASE WHEN status = '{s}' THEN 1 ELSE 0 END)" for s in STATES)
    op.execute(
        f"INSERT INTO delivery_tally (issue_id, shard, {COLUMNS}) "
        f"SELECT issue_id, '', {sums} FROM deliveries GROUP BY issue_id"
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    cast = "" if sqlite else "::int"
    inserted = ", ".join(_is("NEW", s, cast) for s in STATES)
    changed = ", ".join(f"{_is('NEW', s, cast)} - {_is('OLD', s, cast)}" for s in STATES)
    deleted = ", ".join(f"-{_is('OLD', s, cast)}" for s in STATES)
    into = f"INSERT INTO delivery_tally (issue_id, shard, {COLUMNS}) VALUES"
    if sqlite:
        op.execute(
            "CREATE TRIGGER delivery_tally_insert AFTER INSERT ON deliveries BEGIN "
            f"{into} (NEW.issue_id, '', {inserted}) {UPSERT}; END"
        )
        op.execute(
            "CREATE TRIGGER delivery_tally_update AFTER UPDATE OF status ON deliveries "
            "WHEN OLD.status IS NOT NEW.status BEGIN "
            f"{into} (NEW.issue_id, {BY_SENDER}, {changed}) {UPSERT}; END"
        )
        op.execute(
            "CREATE TRIGGER delivery_tally_delete AFTER DELETE ON deliveries BEGIN "
            f"{into} (OLD.issue_id, '', {deleted}) {UPSERT}; END"
        )
        return
    # PostgreSQL: the million rows made at the start of a send are counted once per statement
    counted = ", ".join(f"count(*) FILTER (WHERE status = '{s}')" for s in STATES)
    op.execute(
        "CREATE FUNCTION delivery_tally_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO delivery_tally (issue_id, shard, {COLUMNS}) "
        f"SELECT issue_id, '', {counted} FROM new_rows GROUP BY issue_id {UPSERT}; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE FUNCTION delivery_tally_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP = 'DELETE' THEN {into} (OLD.issue_id, '', {deleted}) {UPSERT}; "
        f"ELSE {into} (NEW.issue_id, {BY_SENDER}, {changed}) {UPSERT}; END IF; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE FUNCTION delivery_tally_reset() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "DELETE FROM delivery_tally; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER delivery_tally_insert AFTER INSERT ON deliveries "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_tally_insert()"
    )
    op.execute(
        "CREATE TRIGGER delivery_tally_update AFTER UPDATE OF status ON deliveries FOR EACH ROW "
        "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION delivery_tally_change()"
    )
    op.execute(
        "CREATE TRIGGER delivery_tally_delete AFTER DELETE ON deliveries FOR EACH ROW "
        "EXECUTE FUNCTION delivery_tally_change()"
    )
    op.execute(
        "CREATE TRIGGER delivery_tally_truncate AFTER TRUNCATE ON deliveries "
        "FOR EACH STATEMENT EXECUTE FUNCTION delivery_tally_reset()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER delivery_tally_{name}")
    else:
        for name in ("insert", "update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER delivery_tally_{name} ON deliveries")
        for name in ("insert", "change", "reset"):
            op.execute(f"DROP FUNCTION delivery_tally_{name}()")
    op.drop_table("delivery_tally")

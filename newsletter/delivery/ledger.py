"""The delivery ledger in SQL: the engine's `Ledger`, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ..bounces.policy import BOUNCE_CLOSES
from ..db import widths
from ..db.engine import Database
from ..db.models import DeliveryStatus, SubscriberStatus, storable
from ..errors import SenderFenced
from .records import DeliveryTarget, Group, LedgerResult, MarkResult

__all__ = ["DeliveryLedger"]


class _Statements(NamedTuple):
    """One group commit's statements' parameters, as DeliveryLedger.commit lays them out."""

    records: list[tuple[Any, ...]]
    bounces: list[tuple[Any, ...]]
    puts: list[tuple[Any, ...]]
    marks: Sequence[int]
    claim_args: dict[str, Any]
    beat: bool
    now: datetime


class DeliveryLedger:
    """The send loop's hot path: one transaction that records finished messages, puts back
    those that never left, marks the next ones in flight and claims more, for every connection
    at once (the group commit). Plain DB-API statements on one connection of the pool, so a
    group costs microseconds on SQLite, not an ORM round; on PostgreSQL the whole group goes in
    one pipeline (psycopg's pipeline mode): two round trips, the statements and then COMMIT,
    however many messages it carries.

    Every statement acts only on rows this sender holds (`claimed_by`), and every transaction
    first makes sure this sender is still enrolled: one that another declared dead (and whose
    rows it took) is fenced off, records nothing and stops."""

    def __init__(self, store: Database, issue_id: int, sender_id: str) -> None:
        self.issue_id, self.sender_id = issue_id, sender_id
        self.sqlite = store.is_sqlite
        self._conn = store.engine.raw_connection()
        self._cur = self._conn.cursor()
        if self.sqlite:  # checkpoint the WAL every ~40 MB rather than every 4 MB: fewer fsyncs per send
            self._cur.execute("PRAGMA wal_autocheckpoint=10000")
            self._sql = {k: v.format_map(_STATES) for k, v in dict(_LEDGER_SQL, **_SQLITE_SQL).items()}
        else:
            both = dict(_LEDGER_SQL, **_POSTGRES_SQL)
            self._sql = {k: v.format_map(_STATES).replace("?", "%s") for k, v in both.items()}
        self._last_time: tuple[datetime | None, Any] = (None, None)

    def _time(self, value: datetime | None) -> Any:
        if value is None or not self.sqlite:
            return value
        if self._last_time[0] != value:  # a group shares one `now`: format it once
            self._last_time = (value, value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"))
        return self._last_time[1]  # SQLAlchemy's SQLite format

    def commit(self, group: Group) -> LedgerResult:
        """One transaction doing what `group` asks, in its order. Raises SenderFenced, with
        nothing written, when this sender was declared dead."""
        now, fates, unmarks, marks = group.now, group.fates, group.unmarks, group.marks
        claim, lease, beat = group.claim, group.lease, group.beat
        issue, me = self.issue_id, self.sender_id
        records = [
            (
                f.status.value,
                storable(f.reply[: widths.REPLY]),  # plain SQL: the column type's rule, called by hand
                f.attempts,
                self._time(f.next_attempt_at),
                self._time(now) if f.status == DeliveryStatus.SENT else None,
                f.status == DeliveryStatus.DEFERRED,  # released for its retry
                f.status == DeliveryStatus.DEFERRED,
                issue,
                f.subscriber_id,
                me,
            )
            for f in fates
        ]
        bounces = [
            (self._time(now), f.subscriber_id, issue, f.subscriber_id, me)
            for f in fates
            if f.status == DeliveryStatus.BOUNCED
        ]
        puts = [(storable(reply), issue, sid, me) for sid, reply in unmarks]
        claim_args = {
            "sender": me,
            "until": self._time(now + lease),
            "issue": issue,
            "now": self._time(now),
            "limit": claim,
        }
        statements = _Statements(records, bounces, puts, marks, claim_args, beat, now)
        return self._commit_sqlite(statements) if self.sqlite else self._commit_postgres(statements)

    def _commit_sqlite(self, g: _Statements) -> LedgerResult:
        cur, sql = self._cur, self._sql
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(sql["enrolled"], (self.sender_id,))
            if cur.fetchone() is None:
                raise SenderFenced(_FENCED)
            if g.records:
                cur.executemany(sql["record"], g.records)
            if g.bounces:
                cur.executemany(sql["bounce"], g.bounces)
            if g.puts:
                cur.executemany(sql["unmark"], g.puts)
            marked: dict[int, MarkResult] = {}
            if g.marks:
                cur.execute(
                    sql["mark"].replace("(?)", "(" + ",".join("?" * len(g.marks)) + ")"),
                    (self.issue_id, self.sender_id, *g.marks),
                )
                marked = _mark_results(g.marks, cur.fetchall())
            claimed: list[DeliveryTarget] = []
            if g.claim_args["limit"] > 0:
                cur.execute(sql["claim"], g.claim_args)
                rows = {i: (attempts, variant) for i, attempts, variant in cur.fetchall()}
                if rows:
                    ids = sorted(rows)
                    cur.execute(
                        f"SELECT id, email, name FROM subscribers WHERE id IN ({','.join('?' * len(ids))})",
                        ids,
                    )
                    people = {i: (e, n) for i, e, n in cur.fetchall()}
                    claimed = [DeliveryTarget(i, *people[i], *rows[i]) for i in ids if i in people]
            if g.beat:
                cur.execute(sql["heartbeat"], (self._time(g.now), self.sender_id))
                if cur.rowcount != 1:
                    raise SenderFenced(_GONE)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return LedgerResult(marked, claimed)

    def _commit_postgres(self, g: _Statements) -> LedgerResult:
        conn: Any = self._conn.driver_connection  # psycopg's own connection
        sql = self._sql
        try:
            with conn.pipeline() as pipeline:  # everything below in one round trip, then COMMIT
                enrolled = conn.execute(sql["enrolled"], (self.sender_id,))
                if g.records:
                    conn.cursor().executemany(sql["record"], g.records)
                if g.bounces:
                    conn.cursor().executemany(sql["bounce"], g.bounces)
                if g.puts:
                    conn.cursor().executemany(sql["unmark"], g.puts)
                marking = (
                    conn.execute(sql["mark"], (self.issue_id, self.sender_id, list(g.marks)))
                    if g.marks
                    else None
                )
                claiming = conn.execute(sql["claim"], g.claim_args) if g.claim_args["limit"] > 0 else None
                beating = conn.execute(sql["heartbeat"], (g.now, self.sender_id)) if g.beat else None
                pipeline.sync()
                if enrolled.fetchone() is None:
                    raise SenderFenced(_FENCED)
                if beating is not None and beating.rowcount != 1:
                    raise SenderFenced(_GONE)
                marked = _mark_results(g.marks, marking.fetchall()) if marking is not None else {}
                claimed = [DeliveryTarget(*row) for row in claiming.fetchall()] if claiming else []
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return LedgerResult(marked, sorted(claimed))

    def close(self) -> None:
        self._cur.close()
        self._conn.close()


_FENCED = (
    "another sender found this one's heartbeat stale and took over its rows; "
    "this one stopped and recorded nothing more (its rows in flight are unknown)"
)
_GONE = "this sender's row is gone: another sender declared it dead"


def _mark_results(asked: Sequence[int], rows: Sequence[tuple[int, str]]) -> dict[int, MarkResult]:
    """A marked row came back `sending`, a skipped one `skipped`; one that did not come back is
    no longer this sender's (or was marked already)."""
    found = {
        sid: MarkResult.IN_FLIGHT if status == DeliveryStatus.SENDING else MarkResult.SKIPPED
        for sid, status in rows
    }
    return {sid: found.get(sid, MarkResult.LOST) for sid in asked}


# The states in the ledger's plain SQL, as {pending}, {active}, {closes}...: spelled by the enums.
_STATES = {st.name.lower(): f"'{st.value}'" for st in DeliveryStatus} | {
    "active": f"'{SubscriberStatus.ACTIVE.value}'",
    "subscriber_bounced": f"'{SubscriberStatus.BOUNCED.value}'",
    "closes": "(" + ", ".join(f"'{st.value}'" for st in BOUNCE_CLOSES) + ")",
}
# Marking: in flight if the subscriber is still active, else skipped (a final state, released).
_MARKED = "CASE WHEN s.status = {active} THEN {sending} ELSE {skipped} END"
_MARK_SET = (
    "SET status = " + _MARKED + ", "
    "last_reply = CASE WHEN s.status = {active} THEN d.last_reply ELSE 'subscriber no longer active' END, "
    "claimed_by = CASE WHEN s.status = {active} THEN d.claimed_by END, "
    "claimed_until = CASE WHEN s.status = {active} THEN d.claimed_until END "
    "FROM subscribers AS s WHERE s.id = d.subscriber_id AND d.issue_id = ? AND d.claimed_by = ? "
    "AND d.status IN ({pending}, {deferred}) "
)
_LEDGER_SQL = {
    # A final state keeps its claim (nothing claims it again); a deferred row is released for its retry.
    "record": "UPDATE deliveries SET status = ?, last_reply = ?, attempts = ?, next_attempt_at = ?, "
    "sent_at = ?, claimed_by = CASE WHEN ? THEN NULL ELSE claimed_by END, "
    "claimed_until = CASE WHEN ? THEN NULL ELSE claimed_until END "
    "WHERE issue_id = ? AND subscriber_id = ? AND claimed_by = ?",
    # The bounce policy's hard bounce (bounces.policy): counted always; a subscriber in
    # BOUNCE_CLOSES becomes bounced. Only for a row this transaction just recorded bounced.
    "bounce": "UPDATE subscribers SET bounce_count = bounce_count + 1, "
    "bounced_at = CASE WHEN status IN {closes} THEN ? ELSE bounced_at END, "
    "status = CASE WHEN status IN {closes} THEN {subscriber_bounced} ELSE status END WHERE id = ? "
    "AND EXISTS (SELECT 1 FROM deliveries WHERE issue_id = ? AND subscriber_id = ? AND claimed_by = ? "
    "AND status = {bounced})",
    "unmark": "UPDATE deliveries SET status = CASE WHEN attempts > 0 THEN {deferred} ELSE {pending} END, "
    "last_reply = ?, claimed_by = NULL, claimed_until = NULL WHERE issue_id = ? AND subscriber_id = ? "
    "AND claimed_by = ?",
}
_SQLITE_SQL = {  # one sender per issue on SQLite, and one host: its clock is the clock
    "mark": "UPDATE deliveries AS d "
    + _MARK_SET
    + "AND d.subscriber_id IN (?) RETURNING subscriber_id, status",
    "claim": "UPDATE deliveries SET claimed_by = :sender, claimed_until = :until "
    "WHERE issue_id = :issue AND subscriber_id IN ("
    "SELECT subscriber_id FROM deliveries WHERE issue_id = :issue "
    "AND (status = {pending} OR (status = {deferred} AND next_attempt_at <= :now)) "
    "AND (claimed_by IS NULL OR claimed_until < :now) ORDER BY subscriber_id LIMIT :limit) "
    "RETURNING subscriber_id, attempts, COALESCE(variant_id, 0)",
    "enrolled": "SELECT 1 FROM senders WHERE id = ?",
    "heartbeat": "UPDATE senders SET heartbeat_at = ? WHERE id = ?",
}
_POSTGRES_SQL = {
    "mark": "UPDATE deliveries AS d " + _MARK_SET + "AND d.subscriber_id = ANY(?) "
    "RETURNING d.subscriber_id, d.status",
    # MATERIALIZED: the LIMIT and the row locks are taken once, in the CTE; PostgreSQL may run an
    # IN (... LIMIT ... FOR UPDATE SKIP LOCKED) subquery more than once, and claim more than LIMIT
    "claim": "WITH picked AS MATERIALIZED (SELECT subscriber_id FROM deliveries WHERE issue_id = %(issue)s "
    "AND (status = {pending} OR (status = {deferred} AND next_attempt_at <= %(now)s)) "
    "AND (claimed_by IS NULL OR claimed_until < %(now)s) ORDER BY subscriber_id LIMIT %(limit)s "
    "FOR UPDATE SKIP LOCKED), "
    "claimed AS (UPDATE deliveries d SET claimed_by = %(sender)s, claimed_until = %(until)s FROM picked "
    "WHERE d.issue_id = %(issue)s AND d.subscriber_id = picked.subscriber_id "
    "RETURNING d.subscriber_id, d.attempts, COALESCE(d.variant_id, 0) AS variant) "
    "SELECT c.subscriber_id, s.email, s.name, c.attempts, c.variant FROM claimed c "
    "JOIN subscribers s ON s.id = c.subscriber_id",
    "enrolled": "SELECT 1 FROM senders WHERE id = ? FOR KEY SHARE",
    "heartbeat": "UPDATE senders SET heartbeat_at = COALESCE(now(), ?) WHERE id = ?",
}

"""The delivery rows of a send: made once per issue, claimed by the senders enrolled for it,
recorded by the ledger, counted at the end. DeliveryRepository is the engine's DeliveryStore."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Text,
    and_,
    case,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from ..db.engine import Database
from ..db.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    IssueVariant,
    Sender,
    Subscriber,
    SubscriberStatus,
)
from ..db.tallies import ACCEPTED, count_deliveries
from ..errors import SendBusyError
from .ledger import DeliveryLedger
from .records import WHOLE_ISSUE, Audience, AudienceChanged, Enrolment, Rendering

__all__ = ["NOTHING_OF_THEIRS", "DeliveryRepository"]

NOTHING_OF_THEIRS = "no story of the reader's sections is in this issue"


def _stored_sections(spelling: str | None) -> tuple[str, ...]:
    """A stored set of sections as SectionSet reads it; a value edited by hand into something else
    is every section (as SectionSet reads it too), never a failed send."""
    try:
        found = json.loads(spelling or "[]")
    except ValueError:
        return ()
    return tuple(str(v) for v in found) if isinstance(found, list) else ()


def _decided(audience: Audience, spellings: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """For each stored set of sections among the readers: its rendering (those that get a variant
    of their own), and the sets whose readers get nothing. AudienceChanged names the sets whose
    rendering is missing."""
    variant: dict[str, int] = {}
    skipped: list[str] = []
    missing: list[tuple[str, ...]] = []
    for spelling in spellings:
        key = audience.key_of(_stored_sections(spelling))
        if key is None:
            skipped.append(spelling)
        elif key not in audience.variants:
            missing.append(key)
        elif audience.variants[key] != WHOLE_ISSUE:
            variant[spelling] = audience.variants[key]
    if missing:
        raise AudienceChanged(sorted(set(missing)))
    return variant, skipped


def _at(version: int | None) -> list[ColumnElement[bool]]:
    return [] if version is None else [Issue.version == version]


class DeliveryRepository(Database):
    """What the send loop asks of the database (delivery.records.DeliveryStore)."""

    def start_send(self, issue_id: int, audience: Audience | None = None) -> int:
        """The issue's audience, fixed once: when its send first begins (the issue leaves `built`),
        one delivery row per subscriber active at that moment (of the audience's frequencies),
        naming the rendering each gets; a reader with nothing in the issue gets a `skipped` row,
        counted and never sent. Any later call adds nobody, so a re-run, a resume or a resend never
        reaches a reader who joined after the issue went out, and a reader who changes their
        choice after it gets what was decided. Returns the rows made. AudienceChanged (and nothing
        done) when a reader's sections need a rendering that `audience` does not have."""
        audience = audience or Audience()
        readers = Subscriber.status == SubscriberStatus.ACTIVE
        if audience.frequencies is not None:
            readers = and_(readers, Subscriber.frequency.in_(audience.frequencies))
        stored = type_coerce(Subscriber.sections, Text)  # each set's one spelling (SectionSet)
        with self.write() as s:
            # the first caller moves the issue on and makes the rows; a concurrent one waits on this
            # row lock (PostgreSQL) or the write lock (SQLite), then finds it moved and adds nothing
            began = s.execute(
                update(Issue)
                .where(Issue.id == issue_id, Issue.status == IssueStatus.BUILT, *_at(audience.version))
                .values(status=IssueStatus.SENDING, counts=None)
            )
            if not began.rowcount:  # type: ignore[attr-defined]
                if audience.version is not None and s.scalar(
                    select(Issue.id).where(Issue.id == issue_id, Issue.status == IssueStatus.BUILT)
                ):  # an editor changed it since its renderings were read: read them again
                    raise AudienceChanged([])
                return 0
            if not self.is_sqlite:  # no reader changes their sections between the look and the rows
                s.execute(text("LOCK TABLE subscribers IN SHARE MODE"))
            spellings = list(s.scalars(select(stored).where(readers).group_by(stored)))
            try:
                variant, skipped = _decided(audience, spellings)
            except AudienceChanged as changed:
                if audience.render is None:
                    raise
                made = {
                    key: self._add_rendering(s, issue_id, key, audience.render(key))
                    for key in changed.missing
                }
                audience = replace(audience, variants={**audience.variants, **made})
                variant, skipped = _decided(audience, spellings)
            reply: ColumnElement[Any] = literal(None, Text)
            status: ColumnElement[Any] = literal(DeliveryStatus.PENDING.value)
            if skipped:
                status = case(
                    {sp: DeliveryStatus.SKIPPED.value for sp in skipped}, value=stored, else_=status
                )
                reply = case({sp: NOTHING_OF_THEIRS for sp in skipped}, value=stored, else_=reply)
            chosen = case(variant, value=stored, else_=null()) if variant else literal(None, Integer)
            s.execute(
                self._insert(Delivery).from_select(
                    ["issue_id", "subscriber_id", "status", "attempts", "last_reply", "variant_id"],
                    select(literal(issue_id), Subscriber.id, status, literal(0), reply, chosen).where(
                        readers
                    ),
                )
            )
            # INSERT's rowcount is not reported on every driver: the issue's tally says how many
            added = sum(count_deliveries(s, [issue_id])[0][issue_id].values())
        if added and not self.is_sqlite:  # fresh statistics, so the claims' plans use the indexes
            with self.guarded(), self.engine.connect() as conn:
                conn.execute(text("ANALYZE deliveries"))
                conn.commit()
        return added

    def _add_rendering(self, s: Session, issue_id: int, key: tuple[str, ...], rendering: Rendering) -> int:
        """Store a rendering within the transaction fixing the audience; one another process
        stored first for the same set is used instead."""
        values = rendering._asdict() | {"issue_id": issue_id, "sections": key}
        s.execute(self._insert(IssueVariant).values(values).on_conflict_do_nothing())
        found: int = s.scalars(
            select(IssueVariant.id).where(IssueVariant.issue_id == issue_id, IssueVariant.sections == key)
        ).one()
        return found

    def register_sender(self, enrolment: Enrolment) -> int:
        """Enrol a sender for an issue; returns how many rows of dead senders became `unknown`.

        Which senders are dead the enrolment judges (Enrolment.finds_dead); here their heartbeats
        are compared on the right clock. A dead sender's `sending` rows were in flight: their fate
        is unknown. Its other claims are released. With `exclusive` (SQLite), a live sender of the
        same issue refuses this one."""
        issue_id, sender_id, host, pid, now, exclusive, stale_after, _ = enrolment
        with self.write() as s:
            others = list(s.scalars(select(Sender).where(Sender.issue_id == issue_id)))
            if self.is_sqlite:  # one host: its clock
                stale = {o.id for o in others if o.heartbeat_at < now - stale_after}
            else:  # senders on several hosts: only the database's clock compares their heartbeats
                since = func.now() - stale_after
                old = select(Sender.id).where(Sender.issue_id == issue_id, Sender.heartbeat_at < since)
                stale = set(s.scalars(old))
            dead: list[Sender] = []
            live: list[Sender] = []
            for o in others:
                (dead if enrolment.finds_dead(o.host, o.pid, stale=o.id in stale) else live).append(o)
            if exclusive and live:
                o = live[0]
                raise SendBusyError(
                    f"issue {issue_id} is being sent by another process (pid {o.pid} on {o.host}); "
                    f"wait for it with 'send --wait'"
                )
            # The dead leave first: on PostgreSQL the DELETE waits for any transaction a "dead" one
            # still has open (each holds a key-share lock on its row), so what it marked in flight
            # is committed, and seen below, before its rows are judged; after it, it can commit nothing.
            for o in dead:
                s.delete(o)
            s.flush()
            live_ids = [o.id for o in live]
            orphaned = and_(
                Delivery.issue_id == issue_id,
                Delivery.status == DeliveryStatus.SENDING,
                or_(Delivery.claimed_by.is_(None), Delivery.claimed_by.not_in(live_ids or [""])),
            )
            unknown = s.execute(
                update(Delivery)
                .where(orphaned)
                .values(
                    status=DeliveryStatus.UNKNOWN,
                    last_reply="in flight when its sender stopped",
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            if dead:
                s.execute(
                    update(Delivery)
                    .where(Delivery.issue_id == issue_id, Delivery.claimed_by.in_([o.id for o in dead]))
                    .values(claimed_by=None, claimed_until=None)
                )
            beat: Any = now if self.is_sqlite else func.now()
            s.add(
                Sender(id=sender_id, issue_id=issue_id, host=host, pid=pid, started_at=now, heartbeat_at=beat)
            )
            return int(unknown.rowcount or 0)  # type: ignore[attr-defined]

    def deregister_sender(self, sender_id: str) -> None:
        """A sender's clean exit: its remaining claims released, its row gone."""
        with self.write() as s:
            issue_id = s.scalar(select(Sender.issue_id).where(Sender.id == sender_id))
            s.execute(
                update(Delivery)
                .where(
                    Delivery.issue_id == issue_id,
                    Delivery.claimed_by == sender_id,
                    Delivery.status != DeliveryStatus.SENDING,
                )
                .values(claimed_by=None, claimed_until=None)
            )
            s.execute(delete(Sender).where(Sender.id == sender_id))

    def live_senders(self, issue_id: int) -> list[Sender]:
        with self.read() as s:
            return list(s.scalars(select(Sender).where(Sender.issue_id == issue_id)))

    def requeue_unknown(self, issue_id: int) -> int:
        with self.write() as s:
            result = s.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.UNKNOWN)
                .values(status=DeliveryStatus.PENDING, claimed_by=None, claimed_until=None)
            )
            s.execute(update(Issue).where(Issue.id == issue_id).values(counts=None))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def release(self, issue_id: int, sender_id: str, subscriber_ids: Sequence[int]) -> None:
        """Give back claimed rows that were never handed to the wire."""
        if not subscriber_ids:
            return
        with self.write() as s:
            s.execute(
                update(Delivery)
                .where(
                    Delivery.issue_id == issue_id,
                    Delivery.claimed_by == sender_id,
                    Delivery.subscriber_id.in_(subscriber_ids),
                    Delivery.status != DeliveryStatus.SENDING,
                )
                .values(claimed_by=None, claimed_until=None)
            )

    def ledger(self, issue_id: int, sender_id: str) -> DeliveryLedger:
        return DeliveryLedger(self, issue_id, sender_id)

    def next_deferred_at(self, issue_id: int) -> datetime | None:
        with self.read() as s:
            return s.scalar(
                select(func.min(Delivery.next_attempt_at)).where(
                    Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.DEFERRED
                )
            )

    def is_paused(self, issue_id: int) -> bool:
        with self.read() as s:
            return bool(s.scalar(select(Issue.paused).where(Issue.id == issue_id)))

    def finish_issue_if_done(self, issue_id: int, *, now: datetime) -> bool:
        """The issue is `sent` once no row is waiting or in flight; its counts are then frozen."""
        open_states = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
        with self.write() as s:
            by_status, accepted = count_deliveries(s, [issue_id])
            if any(by_status[issue_id].get(st, 0) for st in open_states):
                return False
            s.execute(
                update(Issue)
                .where(Issue.id == issue_id)
                .values(
                    status=IssueStatus.SENT,
                    sent_at=case((Issue.sent_at.is_(None), now), else_=Issue.sent_at),
                    counts={**by_status[issue_id], ACCEPTED: accepted[issue_id]},
                )
            )
            return True


if TYPE_CHECKING:  # the engine declares what it needs; this repository is it
    from .records import DeliveryStore

    _IS_THE_ENGINES_STORE: type[DeliveryStore] = DeliveryRepository

"""The subscriber table: signups, confirmations, unsubscribes, imports, searches and erasure."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime, time, timedelta, tzinfo

from sqlalchemy import (
    Select,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from ..db.engine import Database
from ..db.models import (
    CLOSED_STATUSES,
    LIVE_STATUSES,
    BounceEvent,
    Delivery,
    Frequency,
    Issue,
    PreferenceTally,
    Subscriber,
    SubscriberSource,
    SubscriberStatus,
)
from ..db.tallies import subscriber_tally
from .records import ERASED_DOMAIN, NewSubscriber, OneMail, Preferences

__all__ = ["SubscriberRepository", "unsubscribe_in"]


class SubscriberRepository(Database):
    """Subscribers: every change of status happens here, in one transaction each."""

    def add_subscriber(
        self,
        email: str,
        name: str | None,
        *,
        now: datetime,
        status: SubscriberStatus = SubscriberStatus.ACTIVE,
        source: SubscriberSource = SubscriberSource.CLI,
        consent_ip: str | None = None,
        preferences: Preferences | None = None,
    ) -> tuple[Subscriber, bool]:
        """Add a subscriber, or reactivate one who left; returns (subscriber, created). The
        `preferences` given are theirs, new or not; None leaves a known reader's as they are."""
        with self.write() as s:
            existing = s.scalar(select(Subscriber).where(Subscriber.email == email))
            if existing is not None:
                if status == SubscriberStatus.ACTIVE and existing.status != SubscriberStatus.ACTIVE:
                    existing.status = SubscriberStatus.ACTIVE
                    existing.confirmed_at = now
                    existing.unsubscribed_at = None
                if name and not existing.name:
                    existing.name = name
                if preferences is not None:
                    existing.sections, existing.frequency = preferences
                return existing, False
            sections, frequency = preferences or Preferences()
            sub = Subscriber(
                email=email,
                name=name,
                status=status,
                source=source,
                consent_ip=consent_ip,
                bounce_count=0,
                created_at=now,
                confirmed_at=now if status == SubscriberStatus.ACTIVE else None,
                sections=sections,
                frequency=frequency,
            )
            s.add(sub)
            s.flush()
            return sub, True

    def import_subscribers(self, rows: Sequence[NewSubscriber], *, now: datetime) -> tuple[int, int]:
        """Insert a batch in one transaction; addresses already present are left as they are.

        Returns (added, already present)."""
        if not rows:
            return 0, 0
        values = [
            {
                "email": r.email,
                "name": r.name,
                "status": SubscriberStatus.ACTIVE.value,
                "source": SubscriberSource.IMPORT.value,
                "bounce_count": 0,
                "created_at": now,
                "confirmed_at": now,
                "sections": r.preferences.sections,
                "frequency": r.preferences.frequency,
            }
            for r in rows
        ]
        stmt = self._insert(Subscriber).on_conflict_do_nothing(index_elements=["email"])
        with self.write() as s:
            before = sum(subscriber_tally(s, lock=True).values())  # no signup slips in between on PostgreSQL
            s.execute(stmt, values)
            added = sum(subscriber_tally(s).values()) - before
        return added, len(rows) - added

    def get_subscriber(self, email: str) -> Subscriber | None:
        with self.read() as s:
            return s.scalar(select(Subscriber).where(Subscriber.email == email))

    def get_subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        with self.read() as s:
            return s.get(Subscriber, subscriber_id)

    def unsubscribe(self, subscriber_id: int, *, now: datetime) -> bool:
        """Unsubscribe at once an active or pending subscriber; True if the status changed (idempotent)."""
        with self.write() as s:
            return unsubscribe_in(s, subscriber_id, now=now)

    def request_subscription(
        self,
        email: str,
        name: str | None,
        *,
        ip: str | None,
        now: datetime,
        resend_after: timedelta,
        closed_resend_after: timedelta,
    ) -> tuple[Subscriber, bool]:
        """A signup from the form: a new or unsubscribed address becomes `pending`; an active one is
        left alone. One that complained or bounced stays closed (no issue goes to it) until the
        confirmation is confirmed: the report that closed it may be forged, and the confirmation
        reaches only the mailbox's owner (a dead mailbox none). Returns (subscriber, whether a
        confirmation mail is due): not when one was sent within `resend_after`, so a form cannot be
        used to flood one inbox; to a closed address the first after its closing, then none within
        `closed_resend_after`, so the form cannot mail a complainer again and again. Nothing records
        a mail as sent here: `confirmation_sent` does, once the server has taken it."""
        with self.write() as s:
            sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
            if sub is None:
                sub = Subscriber(
                    email=email,
                    name=name,
                    status=SubscriberStatus.PENDING,
                    source=SubscriberSource.FORM,
                    consent_ip=ip,
                    bounce_count=0,
                    created_at=now,
                )
                s.add(sub)
                s.flush()
                return sub, True
            if sub.status == SubscriberStatus.ACTIVE:
                return sub, False
            last = sub.confirm_sent_at
            if sub.status in CLOSED_STATUSES:
                closed_at = _closed_at(sub)
                if last is None or (closed_at is not None and last < closed_at):
                    return sub, True  # the first since it was closed
                return sub, last <= now - closed_resend_after
            if sub.status == SubscriberStatus.UNSUBSCRIBED:
                sub.status, sub.consent_ip = SubscriberStatus.PENDING, ip
                sub.name = name or sub.name
            return sub, last is None or last <= now - resend_after

    def confirmation_sent(self, subscriber_id: int, *, now: datetime) -> None:
        """The confirmation mail was taken by the server: no other for `resend_after`."""
        with self.write() as s:
            s.execute(update(Subscriber).where(Subscriber.id == subscriber_id).values(confirm_sent_at=now))

    def confirm_subscriber(
        self,
        subscriber_id: int,
        *,
        now: datetime,
        preferences: Preferences | None = None,
        issued_at: datetime | None = None,
    ) -> Subscriber | None:
        """Double opt-in done: `pending` becomes `active` (idempotent for an active one), and so
        does a closed address (complained, bounced) that was sent a confirmation after its closing,
        which only its owner can have confirmed. The choices made with the signup (`preferences`)
        are stored then, and only then: a confirm link clicked again later changes nothing."""
        with self.write() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                return None
            if issued_at is not None and int(issued_at.timestamp()) < int(sub.created_at.timestamp()):
                return None  # a link older than the row: a pruned signup's, whose id this one took
            closed_at = _closed_at(sub)
            reopened = (
                sub.status in CLOSED_STATUSES
                and sub.confirm_sent_at is not None
                and (closed_at is None or sub.confirm_sent_at > closed_at)
            )
            if sub.status == SubscriberStatus.PENDING or reopened:
                sub.status, sub.confirmed_at, sub.unsubscribed_at = SubscriberStatus.ACTIVE, now, None
                if preferences is not None:
                    sub.sections, sub.frequency = preferences
            return sub

    def claim_mail(self, subscriber_id: int, kind: OneMail, *, now: datetime) -> bool:
        """Take the one welcome (an active reader) or the one reminder (a pending signup) for this
        subscriber: True for the one caller that did, so two confirmations or two tidies never
        mail it twice. A complained or bounced address is neither, so nothing is taken for it."""
        column = Subscriber.welcomed_at if kind is OneMail.WELCOME else Subscriber.reminded_at
        status = SubscriberStatus.ACTIVE if kind is OneMail.WELCOME else SubscriberStatus.PENDING
        with self.write() as s:
            result = s.execute(
                update(Subscriber)
                .where(Subscriber.id == subscriber_id, Subscriber.status == status, column.is_(None))
                .values({column.key: now})
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release_mail(self, subscriber_id: int, kind: OneMail) -> None:
        """The relay did not take it: the next confirmation or tidy may try again."""
        column = Subscriber.welcomed_at if kind is OneMail.WELCOME else Subscriber.reminded_at
        with self.write() as s:
            s.execute(update(Subscriber).where(Subscriber.id == subscriber_id).values({column.key: None}))

    def signups_to_remind(self, *, mailed_before: datetime) -> list[Subscriber]:
        """Pending signups mailed a confirmation before `mailed_before`, never reminded, whose
        mail has not bounced (a closed address is not pending: it is never here)."""
        with self.read() as s:
            q = select(Subscriber).where(
                Subscriber.status == SubscriberStatus.PENDING,
                Subscriber.reminded_at.is_(None),
                Subscriber.confirm_sent_at <= mailed_before,
                Subscriber.bounce_count == 0,
            )
            return list(s.scalars(q.order_by(Subscriber.id)))

    def stale_signups(self, *, pending_since: datetime) -> list[int]:
        """Signups still pending since before `pending_since` (their last confirmation mail, else
        their signup)."""
        with self.read() as s:
            return list(s.scalars(self._stale(pending_since).order_by(Subscriber.id)))

    def prune_signups(self, *, pending_since: datetime, now: datetime) -> int:
        """Delete the stale signups (row, name, consent IP): nobody agreed to anything. A former
        reader who signed up again and never confirmed keeps the row their deliveries and bounces
        name, back to `unsubscribed`, without the new signup's name and IP. Returns how many."""
        with self.write() as s:
            ids = list(s.scalars(self._stale(pending_since)))
            if not ids:
                return 0
            history = or_(
                exists().where(Delivery.subscriber_id == Subscriber.id),
                exists().where(BounceEvent.subscriber_id == Subscriber.id),
            )
            kept = s.execute(
                update(Subscriber)
                .where(Subscriber.id.in_(ids), Subscriber.status == SubscriberStatus.PENDING, history)
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now, name=None, consent_ip=None)
            ).rowcount  # type: ignore[attr-defined]
            gone = s.execute(
                delete(Subscriber).where(
                    Subscriber.id.in_(ids), Subscriber.status == SubscriberStatus.PENDING
                )
            ).rowcount  # type: ignore[attr-defined]
            return int(kept) + int(gone)

    @staticmethod
    def _stale(pending_since: datetime) -> Select[int]:
        return select(Subscriber.id).where(
            Subscriber.status == SubscriberStatus.PENDING,
            func.coalesce(Subscriber.confirm_sent_at, Subscriber.created_at) < pending_since,
        )

    def set_preferences(
        self, subscriber_id: int, preferences: Preferences, *, name: str | None
    ) -> Subscriber | None:
        """A reader's choices (checked by subscribers.rules) and name, stored in one transaction;
        their status is left as it is (saving choices resubscribes nobody). None: no such reader."""
        with self.write() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                return None
            sub.sections, sub.frequency = preferences
            sub.name = name
            return sub

    def preference_tally(self, *, status: SubscriberStatus | None = None) -> list[PreferenceTally]:
        """Subscribers by status and choice, from the tally the triggers keep: every set of sections
        anyone holds, and how many hold it, without counting the table."""
        with self.read() as s:
            q = select(PreferenceTally).where(PreferenceTally.n > 0)
            if status is not None:
                q = q.where(PreferenceTally.status == status)
            return list(s.scalars(q))

    def iter_subscribers(self, *, status: str | None = None, batch: int = 1000) -> Iterator[Subscriber]:
        """Every subscriber in id order, read in keyset batches (never the whole table at once)."""
        last = 0
        while True:
            with self.read() as s:
                q = select(Subscriber).where(Subscriber.id > last)
                if status:
                    q = q.where(Subscriber.status == status)
                page = list(s.scalars(q.order_by(Subscriber.id).limit(batch)))
            if not page:
                return
            yield from page
            last = page[-1].id

    def audience_sections(self, frequencies: Sequence[Frequency] | None) -> list[tuple[str, ...]]:
        """The sets of sections the active readers of these frequencies (None: all) hold, from the
        tally the triggers keep: a few rows, whatever the list's size."""
        q = select(PreferenceTally.sections).where(
            PreferenceTally.status == SubscriberStatus.ACTIVE, PreferenceTally.n > 0
        )
        if frequencies is not None:
            q = q.where(PreferenceTally.frequency.in_(frequencies))
        with self.read() as s:
            return list(dict.fromkeys(s.scalars(q)))

    def subscriber_counts(self) -> dict[str, int]:
        """Subscribers by status, from the tally the triggers keep: no count over the table."""
        with self.read() as s:
            return subscriber_tally(s)

    def search_subscribers(
        self,
        *,
        query: str = "",
        status: str | None = None,
        frequency: Frequency | None = None,
        sections_in: Sequence[tuple[str, ...]] | None = None,
        after: int = 0,
        limit: int = 50,
    ) -> list[Subscriber]:
        """A page of subscribers in id order after `after` (keyset: as fast on page 20,000 as on
        page 1). `query` matches the start of an address (an index range) or part of a name;
        `sections_in`, the sets of sections to match (see `preference_tally`)."""
        with self.read() as s:
            q = select(Subscriber).where(Subscriber.id > after)
            if status:
                q = q.where(Subscriber.status == status)
            if frequency is not None:
                q = q.where(Subscriber.frequency == frequency)
            if sections_in is not None:
                q = q.where(Subscriber.sections.in_(sections_in))
            if query:
                needle = query.strip().lower()
                # the addresses that start with the needle: from it to the next prefix of its length
                # (not needle + U+FFFF: the storage rule drops that non-character from every value)
                beyond = needle[:-1] + chr(min(ord(needle[-1]) + 1, 0x10FFFF)) if needle else ""
                q = q.where(
                    or_(
                        and_(Subscriber.email >= needle, Subscriber.email < beyond),
                        func.lower(Subscriber.name).contains(needle, autoescape=True),
                    )
                )
            return list(s.scalars(q.order_by(Subscriber.id).limit(limit)))

    def subscriber_growth(self, *, days: Sequence[date], tz: tzinfo) -> dict[date, dict[str, int]]:
        """Per day (midnight to midnight in `tz`): subscribers new, confirmed, unsubscribed and
        bounced. One statement of index range counts: no date function over each row, no sort."""
        columns = {
            "new": Subscriber.created_at,
            "confirmed": Subscriber.confirmed_at,
            "unsubscribed": Subscriber.unsubscribed_at,
            "bounced": Subscriber.bounced_at,
        }
        counts = [
            select(func.count())
            .where(
                column >= datetime.combine(d, time(), tz),
                column < datetime.combine(d + timedelta(days=1), time(), tz),
            )
            .scalar_subquery()
            for d in days
            for column in columns.values()
        ]
        if not counts:
            return {}
        with self.read() as s:
            row = iter(s.execute(select(*counts)).one())
        return {d: {name: next(row) for name in columns} for d in days}

    def erase_subscriber(self, subscriber_id: int, *, now: datetime) -> str | None:
        """GDPR erasure: the address, name and consent IP are removed, and the address is scrubbed
        from the server replies kept on deliveries and bounce records; the rows (so every count)
        stay. Returns the address that was erased, or None if there was no such subscriber."""
        with self.write() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                return None
            address = sub.email
            if address.endswith(ERASED_DOMAIN):
                return address
            sub.email = f"erased-{sub.id}{ERASED_DOMAIN}"
            sub.name, sub.consent_ip = None, None
            if sub.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
                sub.status, sub.unsubscribed_at = SubscriberStatus.UNSUBSCRIBED, now
            # servers quote an address in any case: found and scrubbed case-insensitively
            in_any_case = re.compile(re.escape(address), re.I)
            needle = f"%{address}%"
            for row in s.scalars(
                select(Delivery).where(
                    Delivery.subscriber_id == sub.id, func.lower(Delivery.last_reply).like(needle)
                )
            ):
                row.last_reply = in_any_case.sub("[erased]", row.last_reply or "")
            for event in s.scalars(
                select(BounceEvent).where(
                    or_(
                        BounceEvent.subscriber_id == sub.id,
                        func.lower(BounceEvent.address) == address,  # a report kept for review
                        func.lower(BounceEvent.detail).like(needle),
                    )
                )
            ):
                if event.subscriber_id == sub.id or event.address.lower() == address:
                    event.address = ""
                event.detail = in_any_case.sub("[erased]", event.detail)
            return address


def _closed_at(sub: Subscriber) -> datetime | None:
    """When the address was closed: the bounce or the complaint that closed it (None: not closed,
    or closed before the time was kept)."""
    if sub.status == SubscriberStatus.BOUNCED:
        return sub.bounced_at
    return sub.complained_at if sub.status == SubscriberStatus.COMPLAINED else None


def unsubscribe_in(s: Session, subscriber_id: int, *, now: datetime) -> bool:
    """In the session `s`: an active or pending subscriber becomes `unsubscribed`, counted against
    the last issue that reached them; True if the status changed."""
    recent = select(Issue.id).order_by(Issue.id.desc()).limit(30).scalar_subquery()
    last_issue = s.scalar(  # primary-key lookups, one per recent issue
        select(Delivery.issue_id)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.issue_id.in_(recent),
            Delivery.sent_at.is_not(None),
        )
        .order_by(Delivery.issue_id.desc())
        .limit(1)
    )
    result = s.execute(
        update(Subscriber)
        # complained and bounced stay what they are: they say more than "unsubscribed"
        .where(Subscriber.id == subscriber_id, Subscriber.status.in_(LIVE_STATUSES))
        .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now, unsubscribed_issue_id=last_issue)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]

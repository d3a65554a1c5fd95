"""Every query the newsletter makes. The only module with SQL in it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    and_,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db.engine import Database
from .db.models import (
    CLOSED_STATUSES,
    LIVE_STATUSES,
    BounceEvent,
    BounceMail,
    Delivery,
    DeliveryStatus,
    DeliveryTally,
    FeedState,
    Issue,
    IssueStatus,
    Operator,
    ScheduledRun,
    Sender,
    Story,
    Subscriber,
    SubscriberStatus,
    SubscriberTally,
)
from .delivery.ledger import DeliveryLedger
from .delivery.records import Enrolment
from .errors import NewsletterError, SendBusyError

if TYPE_CHECKING:  # made there, stored here
    from .bounces import BouncePolicy
    from .sources import FetchedStory

__all__ = [
    "FoundEvent",
    "MailOutcome",
    "IssueCounts",
    "NewSubscriber",
    "Store",
]

ERASED_DOMAIN = "@erased.invalid"  # RFC 2606: never a real address


class NewSubscriber(NamedTuple):
    email: str
    name: str | None


@dataclass(frozen=True)
class FoundEvent:
    """A bounce or complaint found in a mail: for a subscriber known by token, or by address."""

    kind: str  # hard, soft, complaint
    address: str
    subscriber_id: int | None
    issue_id: int | None
    status: str
    detail: str


@dataclass(frozen=True)
class MailOutcome:
    lines: list[str]  # what changed, one line per event


@dataclass(frozen=True)
class IssueCounts:
    issue_id: int
    issue_date: date
    subject: str
    status: str
    story_count: int
    created_at: datetime
    sent_at: datetime | None
    deliveries: dict[str, int]
    accepted: int = 0  # taken by the receiving server (later bounces included)
    paused: bool = False
    soft_bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0

    @property
    def hard_bounced(self) -> int:
        return self.deliveries.get(DeliveryStatus.BOUNCED.value, 0)

    def rate(self, count: int, *, of_reached: bool = False) -> float:
        """count as a share of the messages accepted (or, for bounces, of those that got a reply)."""
        base = self.deliveries.get("sent", 0) + self.hard_bounced if of_reached else self.accepted
        return count / base if base else 0.0


class Store(Database):
    """Every query of the newsletter over one Database, and the subscriber and issue rules that
    need a transaction."""

    # -- subscribers ----------------------------------------------------------------------------

    def add_subscriber(
        self,
        email: str,
        name: str | None,
        *,
        now: datetime,
        status: SubscriberStatus = SubscriberStatus.ACTIVE,
        source: str = "cli",
        consent_ip: str | None = None,
    ) -> tuple[Subscriber, bool]:
        """Add a subscriber, or reactivate one who left; returns (subscriber, created)."""
        with self.write() as s:
            existing = s.scalar(select(Subscriber).where(Subscriber.email == email))
            if existing is not None:
                if status == SubscriberStatus.ACTIVE and existing.status != SubscriberStatus.ACTIVE:
                    existing.status = SubscriberStatus.ACTIVE
                    existing.confirmed_at = now
                    existing.unsubscribed_at = None
                if name and not existing.name:
                    existing.name = name
                return existing, False
            sub = Subscriber(
                email=email,
                name=name,
                status=status,
                source=source,
                consent_ip=consent_ip,
                bounce_count=0,
                created_at=now,
                confirmed_at=now if status == SubscriberStatus.ACTIVE else None,
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
                "source": "import",
                "bounce_count": 0,
                "created_at": now,
                "confirmed_at": now,
            }
            for r in rows
        ]
        stmt = self._insert(Subscriber).on_conflict_do_nothing(index_elements=["email"])
        with self.write() as s:
            before = sum(_tally(s, lock=True).values())  # no signup slips in between on PostgreSQL
            s.execute(stmt, values)
            added = sum(_tally(s).values()) - before
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
                .values(
                    status=SubscriberStatus.UNSUBSCRIBED,
                    unsubscribed_at=now,
                    unsubscribed_issue_id=last_issue,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def request_subscription(
        self, email: str, name: str | None, *, ip: str | None, now: datetime, resend_after: timedelta
    ) -> tuple[Subscriber, bool]:
        """A signup from the form: a new or unsubscribed address becomes `pending`; an active one is
        left alone, and so is one that complained or hard-bounced (it is never mailed again, and no
        stranger can reopen it). Returns (subscriber, whether a confirmation mail is due): not when
        one was sent within `resend_after`, so a form cannot be used to flood one inbox. Nothing
        records a mail as sent here: `confirmation_sent` does, once the server has taken it."""
        with self.write() as s:
            sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
            if sub is None:
                sub = Subscriber(
                    email=email,
                    name=name,
                    status=SubscriberStatus.PENDING,
                    source="form",
                    consent_ip=ip,
                    bounce_count=0,
                    created_at=now,
                )
                s.add(sub)
                s.flush()
                return sub, True
            if sub.status in CLOSED_STATUSES or sub.status == SubscriberStatus.ACTIVE:
                return sub, False
            if sub.status == SubscriberStatus.UNSUBSCRIBED:
                sub.status, sub.consent_ip = SubscriberStatus.PENDING, ip
                sub.name = name or sub.name
            due = sub.confirm_sent_at is None or sub.confirm_sent_at <= now - resend_after
            return sub, due

    def confirmation_sent(self, subscriber_id: int, *, now: datetime) -> None:
        """The confirmation mail was taken by the server: no other for `resend_after`."""
        with self.write() as s:
            s.execute(update(Subscriber).where(Subscriber.id == subscriber_id).values(confirm_sent_at=now))

    def confirm_subscriber(self, subscriber_id: int, *, now: datetime) -> Subscriber | None:
        """Double opt-in done: `pending` becomes `active` (idempotent for an active one)."""
        with self.write() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                return None
            if sub.status == SubscriberStatus.PENDING:
                sub.status, sub.confirmed_at, sub.unsubscribed_at = SubscriberStatus.ACTIVE, now, None
            return sub

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

    def subscriber_counts(self) -> dict[str, int]:
        """Subscribers by status, from the tally the triggers keep: no count over the table."""
        with self.read() as s:
            return _tally(s)

    def search_subscribers(
        self, *, query: str = "", status: str | None = None, after: int = 0, limit: int = 50
    ) -> list[Subscriber]:
        """A page of subscribers in id order after `after` (keyset: as fast on page 20,000 as on
        page 1). `query` matches the start of an address (an index range) or part of a name."""
        with self.read() as s:
            q = select(Subscriber).where(Subscriber.id > after)
            if status:
                q = q.where(Subscriber.status == status)
            if query:
                needle = query.strip().lower()
                q = q.where(
                    or_(
                        and_(Subscriber.email >= needle, Subscriber.email < needle + "\uffff"),
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

    def problem_deliveries(
        self, issue_id: int, *, after: int = 0, limit: int = 50
    ) -> list[tuple[int, str, str, int, str | None]]:
        """Failed, bounced and unknown deliveries of an issue with the server's replies, a page in
        subscriber order: (subscriber id, email, status, attempts, reply)."""
        # one index range per state, each read no further than a page: a single IN over the states
        # would walk the issue's whole primary key in subscriber order (a million rows mid-send)
        states = [DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.UNKNOWN]
        pages = [
            select(Delivery.subscriber_id, Delivery.status, Delivery.attempts, Delivery.last_reply)
            .where(Delivery.issue_id == issue_id, Delivery.status == state, Delivery.subscriber_id > after)
            .order_by(Delivery.subscriber_id)
            .limit(limit)
            .subquery()
            for state in states
        ]
        page = union_all(*(select(p) for p in pages)).subquery()
        with self.read() as s:
            rows = s.execute(
                select(page.c.subscriber_id, Subscriber.email, *page.c["status", "attempts", "last_reply"])
                .join(Subscriber, Subscriber.id == page.c.subscriber_id)
                .order_by(page.c.subscriber_id)
                .limit(limit)
            )
            return [tuple(r) for r in rows]

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

    # -- operators --------------------------------------------------------------------------------

    def save_operator(self, name: str, password_hash: str, *, now: datetime) -> bool:
        """Add an operator, or set a new password for one; True if added."""
        with self.write() as s:
            op = s.scalar(select(Operator).where(Operator.name == name))
            if op is not None:  # a new password ends every session of the old one
                op.password_hash, op.session_version = password_hash, op.session_version + 1
                return False
            s.add(Operator(name=name, password_hash=password_hash, created_at=now))
            return True

    def operator(self, *, name: str | None = None, operator_id: int | None = None) -> Operator | None:
        with self.read() as s:
            if operator_id is not None:
                return s.get(Operator, operator_id)
            return s.scalar(select(Operator).where(Operator.name == name))

    def end_operator_sessions(self, operator_id: int) -> None:
        """Logout: every session of this operator ends, wherever its cookie is."""
        with self.write() as s:
            s.execute(
                update(Operator)
                .where(Operator.id == operator_id)
                .values(session_version=Operator.session_version + 1)
            )

    def operator_logged_in(self, operator_id: int, *, password_hash: str | None, now: datetime) -> None:
        with self.write() as s:
            values: dict[str, Any] = {"last_login_at": now}
            if password_hash:  # a rehash with today's parameters
                values["password_hash"] = password_hash
            s.execute(update(Operator).where(Operator.id == operator_id).values(**values))

    # -- feeds and stories ----------------------------------------------------------------------

    def feed_state(self, url: str) -> FeedState | None:
        with self.read() as s:
            return s.get(FeedState, url)

    def save_feed_state(
        self, url: str, *, etag: str | None, last_modified: str | None, error: str | None, now: datetime
    ) -> None:
        with self.write() as s:
            state = s.get(FeedState, url)
            if state is None:
                state = FeedState(url=url, checked_at=now)
                s.add(state)
            if error is None:
                state.etag, state.last_modified = etag, last_modified
            state.checked_at, state.last_error = now, error

    def add_stories(self, stories: Iterable[FetchedStory], *, now: datetime) -> int:
        """Store stories not seen before (by identity); returns how many were new."""
        values = [
            {
                "identity": st.identity,
                "source": st.source,
                "title": st.title,
                "link": st.link,
                "summary": st.summary,
                "bullets": list(st.bullets),
                "author": st.author,
                "image": st.image,
                "section": st.section,
                "published_at": st.published_at,
                "fetched_at": now,
            }
            for st in stories
        ]
        if not values:
            return 0
        stmt = self._insert(Story).on_conflict_do_nothing(index_elements=["identity"])
        with self.write() as s:
            before = s.scalar(select(func.count()).select_from(Story)) or 0
            s.execute(stmt, values)
            after = s.scalar(select(func.count()).select_from(Story)) or 0
        return after - before

    def unused_stories(self, *, since: datetime, until: datetime) -> list[Story]:
        """Stories in no issue yet, published (or, undated, fetched) within [since, until]."""
        when = func.coalesce(Story.published_at, Story.fetched_at)
        with self.read() as s:
            q = select(Story).where(Story.issue_id.is_(None), when >= since, when <= until)
            return list(s.scalars(q.order_by(Story.id)))

    # -- issues ---------------------------------------------------------------------------------

    def create_issue(
        self,
        issue_date: date,
        *,
        story_ids: Sequence[int],
        render: Any,
        now: datetime,
    ) -> Issue | None:
        """Store an issue for a date and mark its stories used, in one transaction.

        `render(issue_id)` returns (subject, preheader, html, text): it is called while the write
        lock is held, so it must be quick (RenderedIssue.for_issue fills in an id). None when the
        date already has an issue (another builder won)."""
        try:
            with self.write() as s:
                if s.scalar(select(Issue.id).where(Issue.issue_date == issue_date)) is not None:
                    return None
                issue = Issue(
                    issue_date=issue_date,
                    subject="",
                    html="",
                    text="",
                    story_count=len(story_ids),
                    status=IssueStatus.BUILT,
                    created_at=now,
                )
                s.add(issue)
                s.flush()
                issue.subject, issue.preheader, issue.html, issue.text = render(issue.id)
                taken = s.execute(
                    update(Story)
                    .where(Story.id.in_(story_ids), Story.issue_id.is_(None))
                    .values(issue_id=issue.id)
                )
                if taken.rowcount != len(story_ids):  # type: ignore[attr-defined]
                    raise NewsletterError("a story of this issue was taken by another issue meanwhile")
                return issue
        except IntegrityError:
            return None

    def get_issue(self, issue_id: int) -> Issue | None:
        with self.read() as s:
            return s.get(Issue, issue_id)

    def issue_for_date(self, issue_date: date) -> Issue | None:
        with self.read() as s:
            return s.scalar(select(Issue).where(Issue.issue_date == issue_date))

    def list_issues(self, *, limit: int = 100) -> list[Issue]:
        with self.read() as s:
            return list(s.scalars(select(Issue).order_by(Issue.issue_date.desc()).limit(limit)))

    def archived_issues(self, *, limit: int = 365) -> list[Issue]:
        """The public archive: issues whose send has begun and is not paused, newest first."""
        with self.read() as s:
            q = select(Issue).where(_IN_ARCHIVE).order_by(Issue.issue_date.desc()).limit(limit)
            return list(s.scalars(q))

    def archived_issue(self, issue_id: int) -> Issue | None:
        with self.read() as s:
            return s.scalar(select(Issue).where(Issue.id == issue_id, _IN_ARCHIVE))

    def latest_issue(self) -> Issue | None:
        with self.read() as s:
            return s.scalar(select(Issue).order_by(Issue.issue_date.desc()).limit(1))

    def issue_counts(self, issue_id: int | None = None, *, limit: int = 30) -> list[IssueCounts]:
        """Issues, newest first, with their deliveries counted by state (one aggregate query)."""
        with self.read() as s:
            q = select(Issue).order_by(Issue.issue_date.desc()).limit(limit)
            if issue_id is not None:
                q = select(Issue).where(Issue.id == issue_id)
            issues = list(s.scalars(q))
            ids = [i.id for i in issues]
            counts: dict[int, dict[str, int]] = {i: {} for i in ids}
            accepted: dict[int, int] = dict.fromkeys(ids, 0)
            events: dict[tuple[int, str], int] = {}
            unsubscribed: dict[int, int] = {}
            if ids:
                frozen = {i.id: i.counts for i in issues if i.counts is not None}
                for iid, c in frozen.items():
                    accepted[iid] = c.get(ACCEPTED, 0)
                    counts[iid] = {k: v for k, v in c.items() if k != ACCEPTED}
                live = [i for i in ids if i not in frozen]
                if live:
                    live_counts, live_accepted = _count_deliveries(s, live)
                    counts |= live_counts
                    accepted |= live_accepted
                for eid, kind, n in s.execute(
                    select(
                        BounceEvent.issue_id,
                        BounceEvent.kind,
                        func.count(func.distinct(BounceEvent.subscriber_id)),
                    )
                    .where(BounceEvent.issue_id.in_(ids), BounceEvent.kind.in_(["soft", "complaint"]))
                    .group_by(BounceEvent.issue_id, BounceEvent.kind)
                ):
                    if eid is not None:
                        events[(eid, kind)] = n
                unsubscribed = {
                    iid: n
                    for iid, n in s.execute(
                        select(Subscriber.unsubscribed_issue_id, func.count())
                        .where(Subscriber.unsubscribed_issue_id.in_(ids))
                        .group_by(Subscriber.unsubscribed_issue_id)
                    )
                    if iid is not None
                }
        return [
            IssueCounts(
                issue_id=i.id,
                issue_date=i.issue_date,
                subject=i.subject,
                status=i.status,
                story_count=i.story_count,
                created_at=i.created_at,
                sent_at=i.sent_at,
                deliveries={st.value: counts[i.id].get(st.value, 0) for st in DeliveryStatus},
                accepted=accepted[i.id],
                soft_bounced=events.get((i.id, "soft"), 0),
                complained=events.get((i.id, "complaint"), 0),
                unsubscribed=unsubscribed.get(i.id, 0),
                paused=i.paused,
            )
            for i in issues
        ]

    # -- deliveries -----------------------------------------------------------------------------

    def start_send(self, issue_id: int) -> int:
        """The issue's audience, fixed once: when its send first begins (the issue leaves `built`),
        one delivery row per subscriber active at that moment. Any later call adds nobody, so a
        re-run, a resume or a resend never reaches a reader who joined after the issue went out.
        Returns the rows made."""
        stmt = self._insert(Delivery).from_select(
            ["issue_id", "subscriber_id", "status", "attempts"],
            select(
                literal(issue_id),
                Subscriber.id,
                literal(DeliveryStatus.PENDING.value),
                literal(0),
            ).where(Subscriber.status == SubscriberStatus.ACTIVE),
        )
        with self.write() as s:
            # the first caller moves the issue on and makes the rows; a concurrent one waits on this
            # row lock (PostgreSQL) or the write lock (SQLite), then finds it moved and adds nothing
            began = s.execute(
                update(Issue)
                .where(Issue.id == issue_id, Issue.status == IssueStatus.BUILT)
                .values(status=IssueStatus.SENDING, counts=None)
            )
            if not began.rowcount:  # type: ignore[attr-defined]
                return 0
            s.execute(stmt)
            # INSERT's rowcount is not reported on every driver: the issue's tally says how many
            added = sum(_count_deliveries(s, [issue_id])[0][issue_id].values())
        if added and not self.is_sqlite:  # fresh statistics, so the claims' plans use the indexes
            with self.engine.connect() as conn:
                conn.execute(text("ANALYZE deliveries"))
                conn.commit()
        return added

    # -- the schedule ----------------------------------------------------------------------------

    def claim_scheduled_run(self, scheduled_for: datetime, *, host: str, pid: int, now: datetime) -> bool:
        """True for the one scheduler that gets to run this fire time."""
        try:
            with self.write() as s:
                if s.get(ScheduledRun, scheduled_for) is not None:
                    return False
                s.add(ScheduledRun(scheduled_for=scheduled_for, started_at=now, host=host, pid=pid))
                return True
        except IntegrityError:
            return False

    def finish_scheduled_run(
        self, scheduled_for: datetime, *, issue_id: int | None, outcome: str, now: datetime
    ) -> None:
        with self.write() as s:
            run = s.get(ScheduledRun, scheduled_for)
            if run is not None:
                run.finished_at, run.issue_id, run.outcome = now, issue_id, outcome[:2000]

    def attach_scheduled_issue(self, scheduled_for: datetime, issue_id: int) -> None:
        """Note the issue a run is sending, so a resume after a crash can close the run."""
        with self.write() as s:
            s.execute(
                update(ScheduledRun)
                .where(ScheduledRun.scheduled_for == scheduled_for)
                .values(issue_id=issue_id)
            )

    def finish_scheduled_runs_of_issue(self, issue_id: int, *, outcome: str, now: datetime) -> None:
        """Close the runs cut short while sending this issue (a crash), now that a resume ended it."""
        with self.write() as s:
            s.execute(
                update(ScheduledRun)
                .where(ScheduledRun.issue_id == issue_id, ScheduledRun.finished_at.is_(None))
                .values(finished_at=now, outcome=outcome[:2000])
            )

    def last_scheduled_run(self) -> ScheduledRun | None:
        with self.read() as s:
            return s.scalar(select(ScheduledRun).order_by(ScheduledRun.scheduled_for.desc()).limit(1))

    def unfinished_issues(self, *, since: date) -> list[Issue]:
        """Issues of recent dates whose send has begun but not ended (a crash, a stop, retries due)."""
        with self.read() as s:
            q = select(Issue).where(
                Issue.status == IssueStatus.SENDING, Issue.issue_date >= since, Issue.paused.is_(False)
            )
            return list(s.scalars(q.order_by(Issue.issue_date)))

    # -- bounces and complaints ---------------------------------------------------------------

    def bounce_source_seen(self, source: str) -> bool:
        with self.read() as s:
            return s.scalar(select(BounceMail.id).where(BounceMail.source == source).limit(1)) is not None

    def bounce_mail_seen(self, digest: str) -> bool:
        with self.read() as s:
            return s.scalar(select(BounceMail.id).where(BounceMail.digest == digest)) is not None

    def record_bounce_mail(
        self,
        *,
        digest: str,
        source: str,
        kind: str,
        note: str,
        events: Iterable[FoundEvent],
        now: datetime,
        policy: BouncePolicy,
    ) -> MailOutcome | None:
        """Record a mail and act on its events as `policy` judges them (bounces.BouncePolicy), in
        one transaction; None if it was recorded before."""
        try:
            with self.write() as s:
                if s.scalar(select(BounceMail.id).where(BounceMail.digest == digest)) is not None:
                    return None
                mail = BounceMail(
                    digest=digest, source=source[:500], kind=kind, note=note[:2000], read_at=now
                )
                s.add(mail)
                s.flush()
                lines = [self._apply_event(s, mail.id, e, now, policy) for e in events]
                return MailOutcome(lines)
        except IntegrityError:
            return None

    def _apply_event(
        self, s: Session, mail_id: int, e: FoundEvent, now: datetime, policy: BouncePolicy
    ) -> str:
        # only a signed token names a subscriber: an address alone is kept for the operator's review
        sub = s.get(Subscriber, e.subscriber_id) if e.subscriber_id else None
        known = e.issue_id is not None and s.get(Issue, e.issue_id) is not None
        issue_id = e.issue_id if known else None
        s.add(
            BounceEvent(
                mail_id=mail_id,
                subscriber_id=sub.id if sub else None,
                issue_id=issue_id,
                kind=e.kind,
                address=(sub.email if sub else e.address)[:320],
                status=e.status[:16],
                detail=e.detail,
                created_at=now,
            )
        )
        soft = 0
        if sub is not None and e.kind == "soft":
            s.flush()
            soft = (
                s.scalar(
                    select(func.count())
                    .select_from(BounceEvent)
                    .where(
                        BounceEvent.subscriber_id == sub.id,
                        BounceEvent.kind == "soft",
                        BounceEvent.created_at >= now - policy.soft_window,
                    )
                )
                or 0
            )
        verdict = policy.judge(
            kind=e.kind,
            code=e.status,
            address=sub.email if sub else e.address,
            named=e.subscriber_id is not None,
            current=sub.status if sub else None,
            soft_count=soft,
        )
        if sub is None:
            return verdict.line
        if verdict.count_bounce:
            sub.bounce_count += 1
        if verdict.delivery_bounced and issue_id is not None:
            changed = s.execute(
                update(Delivery)
                .where(
                    Delivery.issue_id == issue_id,
                    Delivery.subscriber_id == sub.id,
                    Delivery.status == DeliveryStatus.SENT,
                )
                .values(
                    status=DeliveryStatus.BOUNCED, last_reply=f"bounced later: {e.status} {e.detail}"[:1000]
                )
            )
            if changed.rowcount:  # type: ignore[attr-defined]
                _move_frozen_count(s, issue_id, DeliveryStatus.SENT, DeliveryStatus.BOUNCED)
        if verdict.status is not None:
            sub.status = verdict.status
            if verdict.status == SubscriberStatus.BOUNCED:
                sub.bounced_at = now
        return verdict.line

    def bounce_mails_for_review(
        self, *, before: int | None = None, limit: int = 50
    ) -> list[tuple[BounceMail, list[BounceEvent]]]:
        """Mails that changed nobody and want a person's eye, newest first: reports attributed by no
        signed token, mails not understood, and mails that could not be handled."""
        with self.read() as s:
            q = select(BounceMail).where(BounceMail.kind.in_(REVIEW_KINDS))
            if before is not None:
                q = q.where(BounceMail.id < before)
            mails = list(s.scalars(q.order_by(BounceMail.id.desc()).limit(limit)))
            events: dict[int, list[BounceEvent]] = {m.id: [] for m in mails}
            if mails:
                for e in s.scalars(
                    select(BounceEvent).where(BounceEvent.mail_id.in_(events)).order_by(BounceEvent.id)
                ):
                    events[e.mail_id].append(e)
        return [(m, events[m.id]) for m in mails]

    # -- senders and claims -------------------------------------------------------------------

    def register_sender(self, enrolment: Enrolment) -> int:
        """Enrol a sender for an issue; returns how many rows of dead senders became `unknown`.

        A sender is dead when its heartbeat is stale, or `is_alive(host, pid)` says so (None: cannot
        tell from here). Its `sending` rows were in flight: their fate is unknown. Its other claims
        are released. With `exclusive` (SQLite), a live sender of the same issue refuses this one."""
        issue_id, sender_id, host, pid, now, exclusive, stale_after, is_alive = enrolment
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
                alive = is_alive(o.host, o.pid)
                (dead if alive is False or (alive is None and o.id in stale) else live).append(o)
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

    def set_paused(self, issue_id: int, paused: bool) -> bool:
        """Pause or resume an issue's send; True if that changed anything."""
        with self.write() as s:
            result = s.execute(
                update(Issue).where(Issue.id == issue_id, Issue.paused != paused).values(paused=paused)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def finish_issue_if_done(self, issue_id: int, *, now: datetime) -> bool:
        """The issue is `sent` once no row is waiting or in flight; its counts are then frozen."""
        open_states = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
        with self.write() as s:
            by_status, accepted = _count_deliveries(s, [issue_id])
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


ACCEPTED = "_accepted"  # in an issue's frozen counts: messages the receiving server took
REVIEW_KINDS = ("review", "unrecognised", "unreadable")  # bounce mails that changed nobody
# Readers may see an issue on the web once it is on its way to them, and not while it is held back.
_IN_ARCHIVE = and_(Issue.status.in_([IssueStatus.SENDING, IssueStatus.SENT]), Issue.paused.is_(False))


def _tally(s: Session, *, lock: bool = False) -> dict[str, int]:
    tally = s.get(SubscriberTally, 1, populate_existing=True, with_for_update=lock)
    return tally.counts() if tally is not None else {}


def _count_deliveries(s: Session, ids: list[int]) -> tuple[dict[int, dict[str, int]], dict[int, int]]:
    """Deliveries by state per issue, and how many were accepted."""
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    accepted: dict[int, int] = dict.fromkeys(ids, 0)
    # the tally's shares, summed: a few rows per issue, however many deliveries it has
    states = [st.value for st in DeliveryStatus]
    rows = s.execute(
        select(DeliveryTally.issue_id, *(func.sum(getattr(DeliveryTally, st)) for st in states))
        .where(DeliveryTally.issue_id.in_(ids))
        .group_by(DeliveryTally.issue_id)
    )
    for iid, *sums in rows:
        counts[iid] = {st: int(n) for st, n in zip(states, sums, strict=True) if n}
        accepted[iid] += counts[iid].get(DeliveryStatus.SENT, 0)
    # accepted, then bounced later: the few bounced rows are read to see which were accepted first
    later = s.execute(
        select(Delivery.issue_id, func.count())
        .where(
            Delivery.issue_id.in_(ids),
            Delivery.status == DeliveryStatus.BOUNCED,
            Delivery.sent_at.is_not(None),
        )
        .group_by(Delivery.issue_id)
    )
    for iid, n in later:
        accepted[iid] += n
    return counts, accepted


def _move_frozen_count(s: Session, issue_id: int, old: DeliveryStatus, new: DeliveryStatus) -> None:
    issue = s.get(Issue, issue_id)
    if issue is not None and issue.counts is not None:
        c = dict(issue.counts)
        c[old.value] = c.get(old.value, 0) - 1
        c[new.value] = c.get(new.value, 0) + 1
        issue.counts = c

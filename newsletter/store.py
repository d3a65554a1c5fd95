"""Every query the newsletter makes. The only module with SQL in it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    and_,
    case,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import NewsletterError
from .models import (
    Base,
    Delivery,
    DeliveryStatus,
    FeedState,
    Issue,
    IssueStatus,
    Story,
    Subscriber,
    SubscriberStatus,
)

__all__ = ["Store", "NewSubscriber", "StoryRecord", "DeliveryTarget", "IssueCounts", "open_store"]

SQLITE_BUSY_TIMEOUT_MS = 10_000


class NewSubscriber(NamedTuple):
    email: str
    name: str | None


@dataclass(frozen=True)
class StoryRecord:
    """A story as a feed gave it, before it is stored (sources never touch the database)."""

    identity: str
    source: str
    title: str
    link: str
    summary: str
    bullets: tuple[str, ...]
    author: str | None
    image: str | None
    section: str
    published_at: datetime | None


class DeliveryTarget(NamedTuple):
    subscriber_id: int
    email: str
    name: str | None
    attempts: int


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


def open_store(url: str) -> Store:
    return Store(url)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._prepare_sqlite_folder(url)
            self.engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    @staticmethod
    def _prepare_sqlite_folder(url: str) -> None:
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- sessions -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._reads() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction; on SQLite it takes the write lock at BEGIN (no upgrade deadlock)."""
        with self._writes() as session, session.begin():
            yield session

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except OperationalError:
            return False

    def migrate(self) -> str:
        """Create or upgrade the schema with Alembic (idempotent); returns the revision now in force."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""

    def create_all(self) -> None:
        """For tests and benchmarks only; `newsletter init` migrates with Alembic."""
        Base.metadata.create_all(self.engine)

    def _insert(self, model: Any) -> Any:
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(model)

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
            before = s.scalar(select(func.count()).select_from(Subscriber)) or 0
            s.execute(stmt, values)
            after = s.scalar(select(func.count()).select_from(Subscriber)) or 0
        added = after - before
        return added, len(rows) - added

    def get_subscriber(self, email: str) -> Subscriber | None:
        with self.read() as s:
            return s.scalar(select(Subscriber).where(Subscriber.email == email))

    def get_subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        with self.read() as s:
            return s.get(Subscriber, subscriber_id)

    def unsubscribe(self, subscriber_id: int, *, now: datetime) -> bool:
        """Unsubscribe at once; True if the status changed (idempotent)."""
        with self.write() as s:
            result = s.execute(
                update(Subscriber)
                .where(Subscriber.id == subscriber_id, Subscriber.status != SubscriberStatus.UNSUBSCRIBED)
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

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
        with self.read() as s:
            rows = s.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
            return {status: n for status, n in rows}

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

    def add_stories(self, stories: Iterable[StoryRecord], *, now: datetime) -> int:
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

    def stories_of_issue(self, issue_id: int) -> list[Story]:
        with self.read() as s:
            return list(s.scalars(select(Story).where(Story.issue_id == issue_id).order_by(Story.id)))

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

        `render(issue_id)` returns (subject, preheader, html, text). None when the date already
        has an issue (another builder won)."""
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
            if ids:
                rows = s.execute(
                    select(Delivery.issue_id, Delivery.status, func.count())
                    .where(Delivery.issue_id.in_(ids))
                    .group_by(Delivery.issue_id, Delivery.status)
                )
                for iid, status, n in rows:
                    counts[iid][status] = n
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
            )
            for i in issues
        ]

    # -- deliveries -----------------------------------------------------------------------------

    def start_send(self, issue_id: int) -> int:
        """One delivery row per subscriber active now (never a second one); returns rows added."""
        stmt = (
            self._insert(Delivery)
            .from_select(
                ["issue_id", "subscriber_id", "status", "attempts"],
                select(
                    literal(issue_id),
                    Subscriber.id,
                    literal(DeliveryStatus.PENDING.value),
                    literal(0),
                ).where(Subscriber.status == SubscriberStatus.ACTIVE),
            )
            .on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
        )
        # INSERT's rowcount is not reported on every driver: count the issue's rows instead.
        rows = select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id)
        with self.write() as s:
            before = s.scalar(rows) or 0
            s.execute(stmt)
            s.execute(
                update(Issue)
                .where(Issue.id == issue_id, Issue.status == IssueStatus.BUILT)
                .values(status=IssueStatus.SENDING)
            )
            return (s.scalar(rows) or 0) - before

    def mark_in_flight_unknown(self, issue_id: int) -> int:
        """Rows left `sending` by a sender that died: their fate is unknown. Returns how many."""
        with self.write() as s:
            result = s.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING)
                .values(status=DeliveryStatus.UNKNOWN, last_reply="in flight when the sender stopped")
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def requeue_unknown(self, issue_id: int) -> int:
        with self.write() as s:
            result = s.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.UNKNOWN)
                .values(status=DeliveryStatus.PENDING)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def due_targets(self, issue_id: int, *, now: datetime, after: int, limit: int) -> list[DeliveryTarget]:
        """The next rows that may be sent now (pending, or deferred and due), keyset after `after`."""
        due = or_(
            Delivery.status == DeliveryStatus.PENDING,
            and_(Delivery.status == DeliveryStatus.DEFERRED, Delivery.next_attempt_at <= now),
        )
        with self.read() as s:
            rows = s.execute(
                select(Delivery.subscriber_id, Subscriber.email, Subscriber.name, Delivery.attempts)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.issue_id == issue_id, Delivery.subscriber_id > after, due)
                .order_by(Delivery.subscriber_id)
                .limit(limit)
            ).all()
        return [DeliveryTarget(r[0], r[1], r[2], r[3]) for r in rows]

    def claim(self, issue_id: int, subscriber_id: int, *, now: datetime) -> bool:
        """Mark one row in flight, if it is still due and its subscriber still active.

        The subscriber's status is checked in the same statement, so an unsubscribe committed
        before this point stops the message; a row whose subscriber left becomes `skipped`."""
        with self.write() as s:
            active = (
                select(Subscriber.id)
                .where(Subscriber.id == subscriber_id, Subscriber.status == SubscriberStatus.ACTIVE)
                .exists()
            )
            due = or_(
                Delivery.status == DeliveryStatus.PENDING,
                and_(Delivery.status == DeliveryStatus.DEFERRED, Delivery.next_attempt_at <= now),
            )
            mine = and_(Delivery.issue_id == issue_id, Delivery.subscriber_id == subscriber_id, due)
            claimed = s.execute(update(Delivery).where(mine, active).values(status=DeliveryStatus.SENDING))
            if claimed.rowcount:  # type: ignore[attr-defined]
                return True
            s.execute(
                update(Delivery)
                .where(mine, ~active)
                .values(status=DeliveryStatus.SKIPPED, last_reply="subscriber no longer active")
            )
            return False

    def record(
        self,
        issue_id: int,
        subscriber_id: int,
        *,
        status: DeliveryStatus,
        reply: str,
        attempts: int,
        next_attempt_at: datetime | None,
        now: datetime,
    ) -> None:
        """Write the fate of one message; a hard bounce also marks the subscriber `bounced`."""
        with self.write() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == subscriber_id)
                .values(
                    status=status,
                    last_reply=reply[:1000],
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    sent_at=now if status == DeliveryStatus.SENT else None,
                )
            )
            if status == DeliveryStatus.BOUNCED:
                s.execute(
                    update(Subscriber)
                    .where(Subscriber.id == subscriber_id)
                    .values(status=SubscriberStatus.BOUNCED, bounce_count=Subscriber.bounce_count + 1)
                )

    def next_deferred_at(self, issue_id: int) -> datetime | None:
        with self.read() as s:
            return s.scalar(
                select(func.min(Delivery.next_attempt_at)).where(
                    Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.DEFERRED
                )
            )

    def finish_issue_if_done(self, issue_id: int, *, now: datetime) -> bool:
        """The issue is `sent` once no row is waiting or in flight."""
        open_states = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
        with self.write() as s:
            waiting = s.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status.in_(open_states))
            )
            if waiting:
                return False
            s.execute(
                update(Issue)
                .where(Issue.id == issue_id)
                .values(
                    status=IssueStatus.SENT,
                    sent_at=case((Issue.sent_at.is_(None), now), else_=Issue.sent_at),
                )
            )
            return True


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys; and transactions that SQLAlchemy begins itself."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below emit BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

"""SQLAlchemy 2 typed models: subscribers, stories, issues, deliveries, feed states."""

from __future__ import annotations

import enum
import functools
import json
import re
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "BounceEvent",
    "Operator",
    "BounceMail",
    "Delivery",
    "DeliveryStatus",
    "DeliveryTally",
    "FeedState",
    "Issue",
    "IssueStatus",
    "ScheduledRun",
    "Frequency",
    "PreferenceTally",
    "SectionSet",
    "Sender",
    "Story",
    "Subscriber",
    "SubscriberStatus",
    "SubscriberTally",
    "StateColumn",
    "StoredJSON",
    "StoredString",
    "StoredText",
    "UTCDateTime",
    "storable",
]

# What PostgreSQL's text (NUL) or an XML page (the issue goes through lxml) cannot hold: the C0
# controls but tab, LF and CR, and the non-characters U+FFFE and U+FFFF, dropped; a lone surrogate
# (no UTF-8 can carry it) becomes U+FFFD, as the code's other bad bytes do.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|([\ud800-\udfff])")


def storable(text: str) -> str:
    """The one cleaning rule for every text the newsletter stores (the column types below apply
    it, and the send ledger's plain SQL calls it): a server's reply, a feed's field, a bounce's
    diagnostic are kept as far as they can be, never refused by the database."""
    return _UNSTORABLE.sub(lambda m: "\ufffd" if m.group(1) else "", text)


class StoredText(TypeDecorator[str]):
    """TEXT whose every value goes through `storable` on its way in."""

    impl: type[String] = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return storable(value) if isinstance(value, str) else value


class StoredString(StoredText):
    """VARCHAR(n) whose every value goes through `storable` on its way in."""

    impl = String
    cache_ok = True


class StoredJSON(TypeDecorator[Any]):
    """JSON whose every string, in lists and tables at any depth, goes through `storable`."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _stored(value)


def _stored(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list | tuple):
        return [_stored(v) for v in value]
    if isinstance(value, dict):
        return {_stored(k): _stored(v) for k, v in value.items()}
    return value


class StateColumn(TypeDecorator[Any]):
    """A state enum stored as its value in a VARCHAR(16) (no migration, no database enum type),
    read back as the enum member; a value this code does not know is an error, not a string."""

    impl = String(16)
    cache_ok = True

    def __init__(self, states: type[enum.StrEnum]) -> None:
        super().__init__()
        self.states = states

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self.states(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.states(value)


class SectionSet(TypeDecorator[tuple[str, ...]]):
    """A reader's chosen sections as one text value: a JSON list, sorted and without repeats, so
    one set has one spelling to compare, group and count by; `[]` is every section. Read back as
    a tuple of names; each name stored through `storable`."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return _spelling(tuple(value)) if value else "[]"  # most readers take all: no JSON made

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[str, ...] | None:
        if value is None:
            return None
        found = json.loads(value)
        return tuple(str(v) for v in found) if isinstance(found, list) else ()


@functools.lru_cache(maxsize=1024)
def _spelling(names: tuple[str, ...]) -> str:
    """A set of sections' one stored spelling (an import writes the same few sets again and again)."""
    return json.dumps(sorted({storable(v) for v in names}), ensure_ascii=False, separators=(",", ":"))


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (naive storage) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        when = datetime.fromisoformat(value) if isinstance(value, str) else value
        assert isinstance(when, datetime)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class Frequency(enum.StrEnum):
    """How often a reader gets the digest: every day's issue, or the weekly edition only."""

    DAILY = "daily"
    WEEKLY = "weekly"


# Never mailed again, whatever anyone types into a form.
CLOSED_STATUSES = (SubscriberStatus.COMPLAINED, SubscriberStatus.BOUNCED)
# Who a bounce may mark `bounced`, and an unsubscribe `unsubscribed`: nobody already closed or gone.
LIVE_STATUSES = (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)


class IssueStatus(enum.StrEnum):
    BUILT = "built"
    SENDING = "sending"
    SENT = "sent"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    BOUNCED = "bounced"
    UNKNOWN = "unknown"
    # The subscriber stopped being active between the start of the send and the claim.
    SKIPPED = "skipped"


class Base(DeclarativeBase):
    pass


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(StoredString(320), unique=True)
    name: Mapped[str | None] = mapped_column(StoredString(200))
    status: Mapped[SubscriberStatus] = mapped_column(
        StateColumn(SubscriberStatus), default=SubscriberStatus.PENDING
    )
    source: Mapped[str] = mapped_column(StoredString(16), default="cli")
    consent_ip: Mapped[str | None] = mapped_column(StoredString(64))
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The last issue that reached them before they unsubscribed: the issue it counts against.
    unsubscribed_issue_id: Mapped[int | None] = mapped_column(Integer)
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # when a complaint closed the address: a confirmation sent after it may reopen it (the form's)
    complained_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # what the reader chose (subscribers.rules checks it): how often, and which sections (() = all)
    frequency: Mapped[Frequency] = mapped_column(
        StateColumn(Frequency), default=Frequency.DAILY, server_default=Frequency.DAILY.value
    )
    sections: Mapped[tuple[str, ...]] = mapped_column(SectionSet(), default=(), server_default="[]")

    __table_args__ = (
        Index("ix_subscribers_status_id", "status", "id"),
        Index("ix_subscribers_unsubscribed_issue", "unsubscribed_issue_id"),
        # the dashboard's daily growth: each a range scan over the last weeks
        Index("ix_subscribers_created_at", "created_at"),
        Index("ix_subscribers_confirmed_at", "confirmed_at"),
        Index("ix_subscribers_unsubscribed_at", "unsubscribed_at"),
        Index("ix_subscribers_bounced_at", "bounced_at"),
    )


class SubscriberTally(Base):
    """Subscribers by status in one row, kept by triggers on `subscribers` (migration 0006)."""

    __tablename__ = "subscriber_tally"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[int] = mapped_column(Integer, default=0)
    unsubscribed: Mapped[int] = mapped_column(Integer, default=0)
    bounced: Mapped[int] = mapped_column(Integer, default=0)
    complained: Mapped[int] = mapped_column(Integer, default=0)

    def counts(self) -> dict[str, int]:
        """{status: n} for the statuses anyone has."""
        return {s.value: n for s in SubscriberStatus if (n := getattr(self, s.value))}


class PreferenceTally(Base):
    """Subscribers by status and choice (frequency, sections), kept by triggers on `subscribers`
    (migration 0014): the dashboard's counts by section and frequency, and every set of sections
    anyone holds, read from a few rows instead of a million."""

    __tablename__ = "preference_tally"

    status: Mapped[SubscriberStatus] = mapped_column(StateColumn(SubscriberStatus), primary_key=True)
    frequency: Mapped[Frequency] = mapped_column(StateColumn(Frequency), primary_key=True)
    sections: Mapped[tuple[str, ...]] = mapped_column(SectionSet(), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)


class Issue(Base):
    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_date: Mapped[date] = mapped_column(Date, unique=True)
    subject: Mapped[str] = mapped_column(StoredText())
    preheader: Mapped[str] = mapped_column(StoredText(), default="")
    html: Mapped[str] = mapped_column(StoredText())
    text: Mapped[str] = mapped_column(StoredText())
    story_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[IssueStatus] = mapped_column(StateColumn(IssueStatus), default=IssueStatus.BUILT)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Pause: the send loop reads it when it claims; a paused send stops claiming and exits.
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Deliveries counted by state once the send ended (and after a later bounce): the dashboard
    # reads these instead of counting a million rows per issue.
    counts: Mapped[dict[str, int] | None] = mapped_column(StoredJSON())
    # The random key in this issue's placeholder names (content.render.Placeholders), so no feed's
    # text can spell them; None for an issue stored before: the fixed names.
    placeholder_key: Mapped[str | None] = mapped_column(StoredString(64))
    # The issue's items in reading order, each a list of story ids: the story shown first, then the
    # other sources that told the same event ("Also covered by"). None for an issue built before.
    items: Mapped[list[list[int]] | None] = mapped_column(StoredJSON())


class Story(Base):
    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(StoredString(512), unique=True)
    source: Mapped[str] = mapped_column(StoredString(200))
    title: Mapped[str] = mapped_column(StoredText())
    link: Mapped[str] = mapped_column(StoredText())
    summary: Mapped[str] = mapped_column(StoredText(), default="")
    bullets: Mapped[list[str]] = mapped_column(StoredJSON(), default=list)
    author: Mapped[str | None] = mapped_column(StoredString(200))
    image: Mapped[str | None] = mapped_column(StoredText())
    section: Mapped[str] = mapped_column(StoredString(200))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime())
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id"))
    # Its sentence vector (content.embed): 384 float16, made once when it is stored; None for a
    # story stored before migration 0011 (or while the model could not run) until it is filled.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_stories_issue_fetched", "issue_id", "fetched_at"),)


class Delivery(Base):
    __tablename__ = "deliveries"

    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"), primary_key=True)
    status: Mapped[DeliveryStatus] = mapped_column(
        StateColumn(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_reply: Mapped[str | None] = mapped_column(StoredText())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The sender that holds the row; a claim is a lease, never a sign that the message is in flight.
    claimed_by: Mapped[str | None] = mapped_column(StoredString(36))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_deliveries_issue_status", "issue_id", "status", "subscriber_id"),)


class DeliveryTally(Base):
    """A share of one issue's deliveries by state, kept by triggers on `deliveries` (migration
    0007): one share per sender and one (shard '') for everything else; the counts are the sum."""

    __tablename__ = "delivery_tally"

    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), primary_key=True)
    shard: Mapped[str] = mapped_column(StoredString(36), primary_key=True)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    sending: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    deferred: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    bounced: Mapped[int] = mapped_column(Integer, default=0)
    unknown: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)


class Sender(Base):
    """A running `send` process: who it is and when it last showed it was alive."""

    __tablename__ = "senders"

    id: Mapped[str] = mapped_column(StoredString(36), primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"))
    host: Mapped[str] = mapped_column(StoredString(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FeedState(Base):
    """What a feed last answered, for conditional requests (ETag, Last-Modified)."""

    __tablename__ = "feed_states"

    url: Mapped[str] = mapped_column(StoredString(1000), primary_key=True)
    etag: Mapped[str | None] = mapped_column(StoredText())
    last_modified: Mapped[str | None] = mapped_column(StoredText())
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(StoredText())


class ScheduledRun(Base):
    """One cron fire time, claimed by the scheduler that runs it (so two never both run it)."""

    __tablename__ = "scheduled_runs"

    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    host: Mapped[str] = mapped_column(StoredString(255))
    pid: Mapped[int] = mapped_column(Integer)
    issue_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(StoredText())


class BounceMail(Base):
    """One mail read from the bounce mailbox, so a re-run counts nothing twice."""

    __tablename__ = "bounce_mails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(StoredString(64), unique=True)  # sha256 of the mail's bytes
    source: Mapped[str] = mapped_column(StoredString(500))  # where it was: maildir key, imap uid, ...
    kind: Mapped[str] = mapped_column(StoredString(16))  # bounce, complaint, auto_reply, unrecognised
    note: Mapped[str] = mapped_column(StoredText(), default="")
    read_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_bounce_mails_source", "source"),)


class BounceEvent(Base):
    """A bounce (hard or soft) or complaint about one recipient, from one mail."""

    __tablename__ = "bounce_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mail_id: Mapped[int] = mapped_column(ForeignKey("bounce_mails.id"))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id"))
    issue_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(StoredString(16))  # hard, soft, complaint
    address: Mapped[str] = mapped_column(StoredString(320), default="")
    status: Mapped[str] = mapped_column(StoredString(16), default="")  # the DSN status code, 5.1.1
    detail: Mapped[str] = mapped_column(StoredText(), default="")
    # what named the subscriber: verp (our signed envelope address; only it closes an address),
    # link (only an unsubscribe link in the returned copy), or "" (nothing signed)
    signed_by: Mapped[str] = mapped_column(StoredString(8), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_bounce_events_subscriber", "subscriber_id", "kind", "created_at"),
        Index("ix_bounce_events_issue", "issue_id", "kind"),
    )


class Operator(Base):
    """Someone who may use /admin; the password is kept as an Argon2id hash."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(StoredString(100), unique=True)
    password_hash: Mapped[str] = mapped_column(StoredString(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Carried by every console session; raised at logout and at a new password, ending them all.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

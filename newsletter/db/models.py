"""SQLAlchemy 2 typed models: subscribers, stories, issues, deliveries, feed states."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from . import widths

__all__ = [
    "Base",
    "BounceEvent",
    "BounceKind",
    "MailKind",
    "SignedBy",
    "SubscriberSource",
    "Operator",
    "BounceMail",
    "Delivery",
    "DeliveryStatus",
    "DeliveryTally",
    "Edition",
    "FeedState",
    "Issue",
    "IssueEdit",
    "IssueStatus",
    "IssueVariant",
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

from .types import (
    SectionSet,
    StateColumn,
    StoredJSON,
    StoredString,
    StoredText,
    UTCDateTime,
    storable,
)


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


class Edition(enum.StrEnum):
    """Which issue of a date: the daily one (daily readers), or the weekly one on `weekly_day`
    (weekly readers). One issue per (date, edition)."""

    DAILY = "daily"
    WEEKLY = "weekly"


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


class SubscriberSource(enum.StrEnum):
    """How a subscriber came: the command line, an import (command line or console), the form."""

    CLI = "cli"
    IMPORT = "import"
    FORM = "form"


class BounceKind(enum.StrEnum):
    """What a bounce event says of one recipient."""

    HARD = "hard"  # 5.x.x: the address does not take mail
    SOFT = "soft"  # 4.x.x: a delivery given up
    COMPLAINT = "complaint"  # a feedback loop's report


class MailKind(enum.StrEnum):
    """What a mail read from the bounce mailbox was found to be."""

    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    REVIEW = "review"  # a report that no signed token attributes, or one not believed: a person looks
    DELAYED = "delayed"  # a warning: the server is still trying
    DELIVERED = "delivered"
    AUTO_REPLY = "auto_reply"
    UNRECOGNISED = "unrecognised"
    UNREADABLE = "unreadable"  # it broke a parser or could not be stored: recorded, reported once


class SignedBy(enum.StrEnum):
    """What named the subscriber of a bounce event."""

    VERP = "verp"  # our signed envelope address: only it closes an address
    LINK = "link"  # only the signed unsubscribe link of a returned copy
    NOTHING = ""


class Base(DeclarativeBase):
    pass


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(StoredString(widths.EMAIL), unique=True)
    name: Mapped[str | None] = mapped_column(StoredString(widths.NAME))
    status: Mapped[SubscriberStatus] = mapped_column(
        StateColumn(SubscriberStatus), default=SubscriberStatus.PENDING
    )
    source: Mapped[str] = mapped_column(StoredString(widths.STATE), default=SubscriberSource.CLI)
    consent_ip: Mapped[str | None] = mapped_column(StoredString(widths.IP))
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
    # a pending signup's one reminder (SPEC 10), and a reader's one welcome mail
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    welcomed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
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
    issue_date: Mapped[date] = mapped_column(Date)
    edition: Mapped[Edition] = mapped_column(
        StateColumn(Edition), default=Edition.DAILY, server_default=Edition.DAILY.value
    )
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
    placeholder_key: Mapped[str | None] = mapped_column(StoredString(widths.PLACEHOLDER_KEY))
    # The issue's items in reading order, each a list of story ids: the story shown first, then the
    # other sources that told the same event ("Also covered by"). None for an issue built before.
    items: Mapped[list[list[int]] | None] = mapped_column(StoredJSON())
    # The editor's hour (SPEC 9): items an editor dropped (restorable), the subject they wrote
    # (None: the configured one), their intro; held: the scheduler and `run` do not send it.
    dropped: Mapped[list[list[int]] | None] = mapped_column(StoredJSON())
    chosen_subject: Mapped[str | None] = mapped_column(StoredText())
    intro: Mapped[str] = mapped_column(StoredText(), default="", server_default="")
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Raised by every edit of what the issue tells: a rendering made from an older version is
    # never stored, and a send whose audience was fixed from one does not begin.
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the "Review:" notes mailed to the editors (the first when built ahead, the second when the
    # send time passed while held): claimed by raising it, so two schedulers mail each once
    review_notes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (UniqueConstraint("issue_date", "edition", name="uq_issues_date_edition"),)


class IssueEdit(Base):
    """One editor's change to an issue before its send began (SPEC 9): who, when, what."""

    __tablename__ = "issue_edits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"))
    who: Mapped[str] = mapped_column(StoredString(widths.NAME))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    action: Mapped[str] = mapped_column(StoredString(widths.STATE))  # an issues.edits.Action
    detail: Mapped[str] = mapped_column(StoredText(), default="")

    __table_args__ = (Index("ix_issue_edits_issue", "issue_id", "id"),)


class IssueVariant(Base):
    """One rendering of an issue for one set of sections its audience holds (SPEC 8): made at
    build time and when the send's audience is fixed, never per reader. A delivery names its
    variant; a delivery without one gets the issue's own rendering (every section)."""

    __tablename__ = "issue_variants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"))
    # the sections this rendering holds, in one spelling (SectionSet: a sorted JSON list)
    sections: Mapped[tuple[str, ...]] = mapped_column(SectionSet())
    subject: Mapped[str] = mapped_column(StoredText())
    preheader: Mapped[str] = mapped_column(StoredText(), default="")
    html: Mapped[str] = mapped_column(StoredText())
    text: Mapped[str] = mapped_column(StoredText())
    story_count: Mapped[int] = mapped_column(Integer, default=0)
    placeholder_key: Mapped[str | None] = mapped_column(StoredString(widths.PLACEHOLDER_KEY))

    __table_args__ = (UniqueConstraint("issue_id", "sections", name="uq_issue_variants_sections"),)


class Story(Base):
    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(StoredString(widths.STORY_IDENTITY), unique=True)
    source: Mapped[str] = mapped_column(StoredString(widths.NAME))
    title: Mapped[str] = mapped_column(StoredText())
    link: Mapped[str] = mapped_column(StoredText())
    summary: Mapped[str] = mapped_column(StoredText(), default="")
    bullets: Mapped[list[str]] = mapped_column(StoredJSON(), default=list)
    author: Mapped[str | None] = mapped_column(StoredString(widths.NAME))
    image: Mapped[str | None] = mapped_column(StoredText())
    section: Mapped[str] = mapped_column(StoredString(widths.NAME))
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
    claimed_by: Mapped[str | None] = mapped_column(StoredString(widths.SENDER_ID))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The rendering this reader gets, fixed with the audience (None: the issue's own, every section).
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("issue_variants.id"))

    __table_args__ = (Index("ix_deliveries_issue_status", "issue_id", "status", "subscriber_id"),)


class DeliveryTally(Base):
    """A share of one issue's deliveries by state, kept by triggers on `deliveries` (migration
    0007): one share per sender and one (shard '') for everything else; the counts are the sum."""

    __tablename__ = "delivery_tally"

    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), primary_key=True)
    shard: Mapped[str] = mapped_column(StoredString(widths.SENDER_ID), primary_key=True)
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

    id: Mapped[str] = mapped_column(StoredString(widths.SENDER_ID), primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"))
    host: Mapped[str] = mapped_column(StoredString(widths.HOST))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FeedState(Base):
    """What a feed last answered, for conditional requests (ETag, Last-Modified)."""

    __tablename__ = "feed_states"

    url: Mapped[str] = mapped_column(StoredString(widths.FEED_URL), primary_key=True)
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
    host: Mapped[str] = mapped_column(StoredString(widths.HOST))
    pid: Mapped[int] = mapped_column(Integer)
    issue_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(StoredText())


class BounceMail(Base):
    """One mail read from the bounce mailbox, so a re-run counts nothing twice."""

    __tablename__ = "bounce_mails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(
        StoredString(widths.DIGEST), unique=True
    )  # sha256 of the mail's bytes
    source: Mapped[str] = mapped_column(StoredString(widths.BOUNCE_SOURCE))  # maildir key, imap uid, ...
    kind: Mapped[str] = mapped_column(StoredString(widths.STATE))  # a MailKind
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
    kind: Mapped[str] = mapped_column(StoredString(widths.STATE))  # a BounceKind
    address: Mapped[str] = mapped_column(StoredString(widths.EMAIL), default="")
    status: Mapped[str] = mapped_column(StoredString(widths.STATE), default="")  # the DSN status code, 5.1.1
    detail: Mapped[str] = mapped_column(StoredText(), default="")
    signed_by: Mapped[str] = mapped_column(StoredString(widths.SIGNED_BY), default=SignedBy.NOTHING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_bounce_events_subscriber", "subscriber_id", "kind", "created_at"),
        Index("ix_bounce_events_issue", "issue_id", "kind"),
    )


class Operator(Base):
    """Someone who may use /admin; the password is kept as an Argon2id hash."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(StoredString(widths.OPERATOR_NAME), unique=True)
    password_hash: Mapped[str] = mapped_column(StoredString(widths.HASH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Carried by every console session; raised at logout and at a new password, ending them all.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

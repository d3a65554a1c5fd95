"""What the delivery engine and its ledger say to each other: the rows a sender holds, what
became of a message, and the answer to "may this one go on the wire?"; and what the engine asks
of the database (`Ledger`, `DeliveryStore`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import NamedTuple, Protocol

from ..db.models import DeliveryStatus, Frequency
from ..errors import NewsletterError

__all__ = [
    "NO_ISSUE",
    "WHOLE_ISSUE",
    "Audience",
    "AudienceChanged",
    "Rendering",
    "DeliveryStore",
    "DeliveryTarget",
    "Enrolment",
    "Fate",
    "Group",
    "Ledger",
    "LedgerResult",
    "MarkResult",
]

NO_ISSUE = 0  # in a VERP token: a mail of no issue (a signup's confirmation)


WHOLE_ISSUE = 0  # a delivery's variant when it gets the issue's own rendering (every section)


class DeliveryTarget(NamedTuple):
    subscriber_id: int
    email: str
    name: str | None
    attempts: int
    variant: int = WHOLE_ISSUE  # the rendering this reader gets (an issue_variants id)


@dataclass(frozen=True)
class Audience:
    """Who an issue goes to and which rendering each reader gets, decided when its send first
    starts (SPEC 8). `frequencies`: the readers' frequencies it goes to (None: every active
    reader). `key_of` turns a reader's stored sections into the sections their issue holds
    (None: nothing of theirs is in it, so they get no mail, counted `skipped`); `variants` maps
    each such key to its rendering's id, or to WHOLE_ISSUE for the issue's own. None as a whole
    is the issue's own rendering for every active reader. An editor's change since `version`
    means other renderings: the send does not begin (AudienceChanged)."""

    frequencies: tuple[Frequency, ...] | None = None
    key_of: Callable[[tuple[str, ...]], tuple[str, ...] | None] = lambda _sections: ()
    variants: Mapping[tuple[str, ...], int] = field(default_factory=lambda: {(): WHOLE_ISSUE})
    # the issue's version (issues.edits) the renderings were read at: None, whatever it is now
    version: int | None = None
    # renders a key that has no rendering yet (a set chosen since the others were made); called
    # while the audience is being fixed, so a reader cannot keep it from being fixed
    render: Callable[[tuple[str, ...]], Rendering] | None = None


class Rendering(NamedTuple):
    """One rendering of an issue for a set of sections, as issue_variants stores it."""

    subject: str
    preheader: str
    html: str
    text: str
    story_count: int
    placeholder_key: str | None


class AudienceChanged(NewsletterError):
    """Readers chose a set of sections that has no rendering yet, after the renderings were made:
    the audience is not fixed; render `missing` and try again."""

    def __init__(self, missing: Sequence[tuple[str, ...]]) -> None:
        super().__init__(f"{len(missing)} sets of sections have no rendering yet")
        self.missing = list(missing)


class MarkResult(Enum):
    IN_FLIGHT = "in flight"  # durable: the message may now go on the wire
    SKIPPED = "skipped"  # the subscriber is no longer active
    LOST = "lost"  # the claim went to another sender (its lease ran out)


class Fate(NamedTuple):
    """What became of one message, as the ledger writes it."""

    subscriber_id: int
    status: DeliveryStatus
    reply: str
    attempts: int
    next_attempt_at: datetime | None


class LedgerResult(NamedTuple):
    marks: dict[int, MarkResult]  # for each row asked to be marked
    claimed: list[DeliveryTarget]


class Group(NamedTuple):
    """One group commit, done in this order: write each fate (a deferred row is released for its
    retry, a bounced one applies the bounce policy); put back each unmarked row (nothing reached
    the server); mark each row in flight, or skipped if its subscriber is no longer active (a row
    that is no longer this sender's is LOST); claim up to `claim` rows that may be sent now (a
    claim says who may send a row, not that anything is in flight); beat the heartbeat."""

    now: datetime
    fates: Sequence[Fate] = ()
    unmarks: Sequence[tuple[int, str]] = ()  # (subscriber id, why it never left)
    marks: Sequence[int] = ()
    claim: int = 0
    lease: timedelta = timedelta(0)
    beat: bool = False


class Enrolment(NamedTuple):
    """A sender joining an issue's send. `is_alive(host, pid)` says whether another sender's
    process still runs (None: cannot tell from here, so only its heartbeat can); `exclusive`
    (SQLite) refuses to join while another live sender holds the issue."""

    issue_id: int
    sender_id: str
    host: str
    pid: int
    now: datetime
    exclusive: bool
    stale_after: timedelta
    is_alive: Callable[[str, int], bool | None]

    def finds_dead(self, host: str, pid: int, *, stale: bool) -> bool:
        """Whether another sender of the issue is dead: its process is known gone, or nothing here
        can tell and its heartbeat is older than `stale_after` (`stale`, by the database's clock)."""
        alive = self.is_alive(host, pid)
        return alive is False or (alive is None and stale)


class Ledger(Protocol):
    """The send's hot path in the database, one group commit at a time (`delivery.ledger` is the
    SQL one). Every row it touches is one this sender holds."""

    def commit(self, group: Group) -> LedgerResult: ...
    def close(self) -> None: ...


class DeliveryStore(Protocol):
    """What the send loop needs of the database (delivery.claims.DeliveryRepository provides it)."""

    is_sqlite: bool

    def register_sender(self, enrolment: Enrolment) -> int: ...
    def deregister_sender(self, sender_id: str) -> None: ...
    def requeue_unknown(self, issue_id: int) -> int: ...
    def start_send(self, issue_id: int, audience: Audience | None = None) -> int: ...
    def release(self, issue_id: int, sender_id: str, subscriber_ids: list[int]) -> None: ...
    def ledger(self, issue_id: int, sender_id: str) -> Ledger: ...
    def next_deferred_at(self, issue_id: int) -> datetime | None: ...
    def finish_issue_if_done(self, issue_id: int, *, now: datetime) -> bool: ...
    def is_paused(self, issue_id: int) -> bool: ...

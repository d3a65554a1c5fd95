"""An issue with its deliveries counted, as the reports show it; an editor's change to one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

from ..db.models import DeliveryStatus
from ..errors import NewsletterError

__all__ = ["EditNote", "IssueCounts", "Rewrite", "SendBegun"]


class SendBegun(NewsletterError):
    """An edit of an issue whose send has begun: nothing was changed (the console's 409)."""


class EditNote(NamedTuple):
    """One line of an issue's edit log: who did what, when."""

    who: str
    action: str
    detail: str
    at: datetime


@dataclass(frozen=True)
class Rewrite:
    """What an issue tells after an edit, rendered: its items and those dropped, the editor's
    subject (None: the configured one) and intro, its own rendering (subject, preheader, html,
    text) and one per set of sections: (sections, (subject, preheader, html, text, story
    count), placeholders' key)."""

    items: list[list[int]]
    dropped: list[list[int]]
    chosen_subject: str | None
    intro: str
    rendered: tuple[str, str, str, str]
    placeholder_key: str | None
    variants: list[tuple[tuple[str, ...], tuple[str, str, str, str, int], str | None]]


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
    edition: str = "daily"
    variants: int = 0  # renderings for sets of sections (SPEC 8); 0: one for every reader
    held: bool = False  # an editor held it: the scheduler and `run` do not send it (SPEC 9)

    @property
    def hard_bounced(self) -> int:
        return self.deliveries.get(DeliveryStatus.BOUNCED.value, 0)

    def rate(self, count: int, *, of_reached: bool = False) -> float:
        """count as a share of the messages accepted (or, for bounces, of those that got a reply)."""
        base = self.deliveries.get("sent", 0) + self.hard_bounced if of_reached else self.accepted
        return count / base if base else 0.0

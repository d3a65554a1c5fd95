"""The bounce policy: what a bounce or complaint does to the subscriber it names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from ..db.models import LIVE_STATUSES, SubscriberStatus

__all__ = ["BOUNCE_CLOSES", "BouncePolicy", "Verdict"]

# The statuses a bounce closes (to `bounced`); any other stays what it is. The ledger's SQL for a
# 5xx at send time spells its rule from this too.
BOUNCE_CLOSES = LIVE_STATUSES


class Verdict(NamedTuple):
    """What one bounce or complaint does to the subscriber it names, and the line that says so."""

    status: SubscriberStatus | None  # the subscriber's new status, if it changes
    count_bounce: bool  # one more bounce on their record
    delivery_bounced: bool  # the delivery, `sent`, becomes `bounced`
    line: str


@dataclass(frozen=True)
class BouncePolicy:
    """The one bounce policy: a complaint closes the address at once; a hard bounce is counted and
    closes an address in BOUNCE_CLOSES (as a 5xx at send time does: the ledger's SQL is spelled
    from it); soft bounces close it at `soft_limit` within `soft_window`. An address already
    closed or gone stays what it is. Only our signed envelope address (VERP) closes an address: a
    report that only the unsubscribe link of a returned copy attributes (a link a reader may have
    passed on) at most unsubscribes them, which a signup undoes, and its soft bounce is not counted."""

    soft_limit: int
    soft_window: timedelta

    def judge(
        self,
        *,
        kind: str,
        code: str,
        address: str,
        signed_by: str,
        current: SubscriberStatus | None,
        soft_count: int,
    ) -> Verdict:
        """`signed_by` is what named the subscriber: "verp", "link" or "" (nothing signed);
        `current` is None when nobody is named (or none by that id); `soft_count` counts this soft
        bounce and those before it within the window."""
        who = f"{kind} {code + ' ' if code else ''}{address or '(no address)'}"
        if current is None:
            why = "no such subscriber" if signed_by else "no signed token names anyone, kept for review"
            return Verdict(None, False, False, f"{who}: {why}; nothing changed")
        live = current in BOUNCE_CLOSES
        if signed_by != "verp":
            only = f"{who}: named only by an unsubscribe link"
            if kind == "soft":
                return Verdict(None, False, False, f"{only}, not counted")
            if not live:
                return Verdict(None, False, False, f"{only}, already {current}")
            return Verdict(SubscriberStatus.UNSUBSCRIBED, False, False, f"{only}: now unsubscribed")
        if kind == "complaint":
            if current == SubscriberStatus.COMPLAINED:
                return Verdict(None, False, False, f"{who}: already complained")
            return Verdict(
                SubscriberStatus.COMPLAINED, False, False, f"{who}: now complained, never mailed again"
            )
        if kind == "hard":
            if not live:
                return Verdict(None, True, True, f"{who}: hard bounce counted, already {current}")
            return Verdict(SubscriberStatus.BOUNCED, True, True, f"{who}: now bounced")
        counted = f"{who}: soft bounce {soft_count} of {self.soft_limit} within {self.soft_window.days} days"
        if live and soft_count >= self.soft_limit:
            return Verdict(SubscriberStatus.BOUNCED, True, False, f"{counted}, now bounced")
        return Verdict(None, False, False, counted)

"""The bounce policy: what a bounce or complaint does to the subscriber it names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from ..db.models import LIVE_STATUSES, BounceKind, SignedBy, SubscriberStatus

__all__ = ["BOUNCE_CLOSES", "BOUNCE_WINDOW", "COMPLAINT_WINDOW", "BouncePolicy", "Verdict"]

# The statuses a bounce closes (to `bounced`); any other stays what it is. The ledger's SQL for a
# 5xx at send time spells its rule from this too.
BOUNCE_CLOSES = LIVE_STATUSES
# How long after its mail went out a VERP address is believed: the token never expires and every
# delivered copy shows it. A real bounce comes within the sender's queue lifetime (5 days for
# Postfix, Exim and sendmail), so 10 days; a feedback loop reports a complaint for weeks, so 30.
BOUNCE_WINDOW = timedelta(days=10)
COMPLAINT_WINDOW = timedelta(days=30)


class Verdict(NamedTuple):
    """What one bounce or complaint does to the subscriber it names, and the line that says so."""

    status: SubscriberStatus | None  # the subscriber's new status, if it changes
    count_bounce: bool  # one more bounce on their record
    delivery_bounced: bool  # the delivery, `sent`, becomes `bounced`
    line: str
    refused: bool = False  # a signed report not believed: nobody changed, the mail is kept for review


@dataclass(frozen=True)
class BouncePolicy:
    """The one bounce policy: a complaint closes the address at once; a hard bounce is counted and
    closes an address in BOUNCE_CLOSES (as a 5xx at send time does: the ledger's SQL is spelled
    from it); soft bounces close it at `soft_limit` within `soft_window`. An address already
    closed or gone stays what it is. Only our signed envelope address (VERP) closes an address, and
    only within BOUNCE_WINDOW (COMPLAINT_WINDOW for a complaint) after its mail went out; an older
    one changes nobody and is kept for review. A report that only the unsubscribe link of a
    returned copy attributes (a link a reader may have passed on) at most unsubscribes them, which
    a signup undoes, and its soft bounce is not counted. A closed address is reopened by its owner
    through the signup form's confirmation (subscribers.repository), so no report is for good."""

    soft_limit: int
    soft_window: timedelta

    def judge(
        self,
        *,
        kind: BounceKind,
        code: str,
        address: str,
        signed_by: SignedBy,
        current: SubscriberStatus | None,
        soft_count: int,
        sent_ago: timedelta | None,
    ) -> Verdict:
        """`signed_by` is what named the subscriber (SignedBy.NOTHING: nothing signed);
        `current` is None when nobody is named (or none by that id); `soft_count` counts this soft
        bounce and those before it within the window; `sent_ago` is how long ago the mail that the
        VERP address names went out (None: no such send on record)."""
        who = f"{kind} {code + ' ' if code else ''}{address or '(no address)'}"
        if current is None:
            why = (
                "no such subscriber"
                if signed_by != SignedBy.NOTHING
                else "no signed token names anyone, kept for review"
            )
            return Verdict(None, False, False, f"{who}: {why}; nothing changed")
        live = current in BOUNCE_CLOSES
        if signed_by != SignedBy.VERP:
            only = f"{who}: named only by an unsubscribe link"
            if kind == BounceKind.SOFT:
                return Verdict(None, False, False, f"{only}, not counted")
            if not live:
                return Verdict(None, False, False, f"{only}, already {current}")
            return Verdict(SubscriberStatus.UNSUBSCRIBED, False, False, f"{only}: now unsubscribed")
        window = COMPLAINT_WINDOW if kind == BounceKind.COMPLAINT else BOUNCE_WINDOW
        if sent_ago is None or sent_ago > window:
            why = (
                "no mail of ours to them is on record for its VERP address"
                if sent_ago is None
                else f"its VERP address's mail went out {sent_ago.days} days ago, and a {kind} "
                f"is believed for {window.days} days"
            )
            line = f"{who}: {why}; kept for review, nothing changed"
            return Verdict(None, False, False, line, refused=True)
        if kind == BounceKind.COMPLAINT:
            if current == SubscriberStatus.COMPLAINED:
                return Verdict(None, False, False, f"{who}: already complained")
            return Verdict(SubscriberStatus.COMPLAINED, False, False, f"{who}: now complained")
        if kind == BounceKind.HARD:
            if not live:
                return Verdict(None, True, True, f"{who}: hard bounce counted, already {current}")
            return Verdict(SubscriberStatus.BOUNCED, True, True, f"{who}: now bounced")
        counted = f"{who}: soft bounce {soft_count} of {self.soft_limit} within {self.soft_window.days} days"
        if live and soft_count >= self.soft_limit:
            return Verdict(SubscriberStatus.BOUNCED, True, False, f"{counted}, now bounced")
        return Verdict(None, False, False, counted)

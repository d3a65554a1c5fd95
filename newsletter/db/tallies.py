"""The counts the triggers keep (subscribers by status, deliveries by issue and state), as the
repositories read them, and an issue's frozen counts once its send has ended."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Delivery, DeliveryStatus, DeliveryTally, Issue, SubscriberTally

__all__ = ["ACCEPTED", "count_deliveries", "move_frozen_count", "subscriber_tally"]

ACCEPTED = "_accepted"  # in an issue's frozen counts: messages the receiving server took


def subscriber_tally(s: Session, *, lock: bool = False) -> dict[str, int]:
    tally = s.get(SubscriberTally, 1, populate_existing=True, with_for_update=lock)
    return tally.counts() if tally is not None else {}


def count_deliveries(s: Session, ids: list[int]) -> tuple[dict[int, dict[str, int]], dict[int, int]]:
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


def move_frozen_count(s: Session, issue_id: int, old: DeliveryStatus, new: DeliveryStatus) -> None:
    issue = s.get(Issue, issue_id)
    if issue is not None and issue.counts is not None:
        c = dict(issue.counts)
        c[old.value] = c.get(old.value, 0) - 1
        c[new.value] = c.get(new.value, 0) + 1
        issue.counts = c

"""Bounce and complaint mails, each recorded once, and what their events did to subscribers and deliveries."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db.engine import Database
from ..db.models import (
    BounceEvent,
    BounceMail,
    Delivery,
    DeliveryStatus,
    Issue,
    Subscriber,
    SubscriberStatus,
)
from ..db.tallies import move_frozen_count
from ..subscribers.repository import unsubscribe_in
from .records import FoundEvent, MailOutcome

if TYPE_CHECKING:
    from .policy import BouncePolicy


__all__ = ["REVIEW_KINDS", "BounceRepository"]

REVIEW_KINDS = ("review", "unrecognised", "unreadable")  # bounce mails that changed nobody


class BounceRepository(Database):
    """Bounce mails and their events."""

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
                signed_by=e.signed_by if sub else "",
                created_at=now,
            )
        )
        soft = 0
        if sub is not None and e.kind == "soft" and e.signed_by == "verp":
            s.flush()
            soft = (
                s.scalar(
                    select(func.count())
                    .select_from(BounceEvent)
                    .where(
                        BounceEvent.subscriber_id == sub.id,
                        BounceEvent.kind == "soft",
                        BounceEvent.signed_by == "verp",  # a soft bounce named only by a link is not counted
                        BounceEvent.created_at >= now - policy.soft_window,
                    )
                )
                or 0
            )
        verdict = policy.judge(
            kind=e.kind,
            code=e.status,
            address=sub.email if sub else e.address,
            signed_by=e.signed_by if e.subscriber_id is not None else "",
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
                move_frozen_count(s, issue_id, DeliveryStatus.SENT, DeliveryStatus.BOUNCED)
        if verdict.status == SubscriberStatus.UNSUBSCRIBED:
            s.flush()
            unsubscribe_in(s, sub.id, now=now)  # as the reader's own unsubscribe, which a signup undoes
            s.refresh(sub)
        elif verdict.status is not None:
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

"""Bounce and complaint mails, each recorded once, and what their events did to subscribers and deliveries."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import widths
from ..db.engine import Database
from ..db.models import (
    BounceEvent,
    BounceKind,
    BounceMail,
    Delivery,
    DeliveryStatus,
    Issue,
    MailKind,
    SignedBy,
    Subscriber,
    SubscriberStatus,
)
from ..db.tallies import move_frozen_count
from ..delivery.records import NO_ISSUE
from ..subscribers.repository import unsubscribe_in
from .records import FoundEvent, MailOutcome

if TYPE_CHECKING:
    from .policy import BouncePolicy, Verdict


__all__ = ["REVIEW_KINDS", "BounceRepository"]

REVIEW_KINDS = (MailKind.REVIEW, MailKind.UNRECOGNISED, MailKind.UNREADABLE)  # mails that changed nobody


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
        kind: MailKind,
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
                    digest=digest,
                    source=source[: widths.BOUNCE_SOURCE],
                    kind=kind,
                    note=note[: widths.NOTE],
                    read_at=now,
                )
                s.add(mail)
                s.flush()
                verdicts = [self._apply_event(s, mail.id, e, now, policy) for e in events]
                if any(v.refused for v in verdicts):  # listed on the console with the others to review
                    refused = "; ".join(v.line for v in verdicts if v.refused)
                    kind = MailKind.REVIEW
                    mail.kind, mail.note = kind, "; ".join(filter(None, (note, refused)))[: widths.NOTE]
                return MailOutcome([v.line for v in verdicts], kind)
        except IntegrityError:
            return None

    def _apply_event(
        self, s: Session, mail_id: int, e: FoundEvent, now: datetime, policy: BouncePolicy
    ) -> Verdict:
        # only a signed token names a subscriber: an address alone is kept for the operator's review
        sub = s.get(Subscriber, e.subscriber_id) if e.subscriber_id else None
        known = e.issue_id is not None and s.get(Issue, e.issue_id) is not None
        issue_id = e.issue_id if known else None
        verp = sub is not None and e.signed_by == SignedBy.VERP
        soft = 0
        if sub is not None and e.signed_by == SignedBy.VERP and e.kind == BounceKind.SOFT:
            soft = 1 + (  # this one and those before it within the window
                s.scalar(
                    select(func.count())
                    .select_from(BounceEvent)
                    .where(
                        BounceEvent.subscriber_id == sub.id,
                        BounceEvent.kind == BounceKind.SOFT,
                        BounceEvent.signed_by
                        == SignedBy.VERP,  # a soft bounce named only by a link is not counted
                        BounceEvent.created_at >= now - policy.soft_window,
                    )
                )
                or 0
            )
        verdict = policy.judge(
            kind=e.kind,
            code=e.status,
            address=sub.email if sub else e.address,
            signed_by=e.signed_by if e.subscriber_id is not None else SignedBy.NOTHING,
            current=sub.status if sub else None,
            soft_count=soft,
            sent_ago=_sent_ago(s, e, sub, now) if sub is not None and verp else None,
        )
        named = sub if sub is not None and not verdict.refused else None  # a refused one counts nowhere
        s.add(
            BounceEvent(
                mail_id=mail_id,
                subscriber_id=named.id if named else None,
                issue_id=issue_id if named else None,
                kind=e.kind,
                address=(sub.email if sub else e.address)[: widths.EMAIL],
                status=e.status[: widths.STATE],
                detail=e.detail,
                signed_by=e.signed_by if named else SignedBy.NOTHING,
                created_at=now,
            )
        )
        if named is None:
            return verdict
        if verdict.count_bounce:
            named.bounce_count += 1
        if verdict.delivery_bounced and issue_id is not None:
            changed = s.execute(
                update(Delivery)
                .where(
                    Delivery.issue_id == issue_id,
                    Delivery.subscriber_id == named.id,
                    Delivery.status == DeliveryStatus.SENT,
                )
                .values(
                    status=DeliveryStatus.BOUNCED,
                    last_reply=f"bounced later: {e.status} {e.detail}"[: widths.REPLY],
                )
            )
            if changed.rowcount:  # type: ignore[attr-defined]
                move_frozen_count(s, issue_id, DeliveryStatus.SENT, DeliveryStatus.BOUNCED)
        if verdict.status == SubscriberStatus.UNSUBSCRIBED:
            s.flush()
            unsubscribe_in(s, named.id, now=now)  # as the reader's own unsubscribe, which a signup undoes
            s.refresh(named)
        elif verdict.status is not None:
            named.status = verdict.status
            if verdict.status == SubscriberStatus.BOUNCED:
                named.bounced_at = now
            elif verdict.status == SubscriberStatus.COMPLAINED:
                named.complained_at = now  # a confirmation sent after it may reopen the address
        return verdict

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


def _sent_ago(s: Session, e: FoundEvent, sub: Subscriber, now: datetime) -> timedelta | None:
    """How long ago the mail that a VERP token names went out to `sub`: their delivery of the
    issue (else the issue, built before it went out), or their last confirmation mail (NO_ISSUE);
    None when no such mail is on record."""
    sent: datetime | None = None
    if e.issue_id == NO_ISSUE:
        sent = sub.confirm_sent_at
    elif e.issue_id is not None:
        delivery = s.get(Delivery, (e.issue_id, sub.id))
        sent = delivery.sent_at if delivery is not None else None
        if sent is None and (issue := s.get(Issue, e.issue_id)) is not None:
            sent = issue.created_at
    return None if sent is None else max(now - sent, timedelta(0))

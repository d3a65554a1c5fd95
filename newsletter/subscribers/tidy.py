"""A tidy list (SPEC 10): a pending signup gets one reminder with a fresh confirm link, and a
signup still pending long after is deleted, since nobody agreed to anything. `newsletter
subscribers tidy` does it once; the scheduler every hour.

Only `pending` rows are read, so an address that complained or bounced (its own status) is never
mailed, and a pending one whose confirmation bounced is not reminded either."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..config import Settings
from ..db.models import DeliveryStatus
from ..delivery.compose import confirmation_message
from ..delivery.sending import envelope_sender
from ..delivery.signing import signer_for
from ..delivery.tokens import Tokens
from ..delivery.transport import Envelope, SendResult, open_transport
from ..links import Links, confirmation_key
from ..store import Store
from .records import OneMail

__all__ = ["TidyReport", "tidy"]


@dataclass(frozen=True)
class TidyReport:
    reminded: int  # with --dry-run: would be
    pruned: int
    not_sent: int = 0  # reminders the relay did not take: tried again at the next tidy
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "reminded": self.reminded,
            "pruned": self.pruned,
            "not_sent": self.not_sent,
            "dry_run": self.dry_run,
        }


def tidy(
    settings: Settings,
    store: Store,
    tokens: Tokens,
    *,
    now: datetime,
    dry_run: bool = False,
    send_mail: Callable[[Envelope, bytes], SendResult] | None = None,
) -> TidyReport:
    """Prune, then remind (nobody is reminded just before being deleted). `send_mail` is the
    configured transport's unless given; it is opened only when a reminder is due."""
    s = settings.subscribers
    stale: list[int] = []
    if s.prune_pending_after_hours:
        since = now - timedelta(hours=s.prune_pending_after_hours)
        stale = store.stale_signups(pending_since=since)
        if not dry_run and stale:
            store.prune_signups(pending_since=since, now=now)
    due = []
    if s.remind_after_hours:
        gone = set(stale)
        mailed_before = now - timedelta(hours=s.remind_after_hours)
        due = [sub for sub in store.signups_to_remind(mailed_before=mailed_before) if sub.id not in gone]
    if dry_run or not due:
        return TidyReport(reminded=len(due), pruned=len(stale), dry_run=dry_run)
    links, signer, mail_from = (
        Links(settings.newsletter.base_url),
        signer_for(settings),
        envelope_sender(settings, tokens),
    )
    transport = None if send_mail else open_transport(settings)
    send = send_mail or transport.send  # type: ignore[union-attr]
    reminded = not_sent = 0
    try:
        for sub in due:
            if not store.claim_mail(sub.id, OneMail.REMINDER, now=now):
                continue  # confirmed, pruned or reminded by another tidy since it was read
            try:  # the operator's confirm template may fail: the reminder is not used up by it
                message = confirmation_message(
                    settings,
                    to_email=sub.email,
                    to_name=sub.name,
                    confirm_url=links.confirm(tokens.confirm(sub.id)),
                    signer=signer,
                )
            except BaseException:
                store.release_mail(sub.id, OneMail.REMINDER)
                raise
            result = send(Envelope(mail_from(sub.id), sub.email, confirmation_key(sub.id, now)), message)
            if result.status == DeliveryStatus.SENT or result.own_failure:
                reminded += result.status == DeliveryStatus.SENT
                not_sent += result.status != DeliveryStatus.SENT
                continue
            store.release_mail(sub.id, OneMail.REMINDER)  # the relay's trouble: the next tidy tries
            not_sent += 1
    finally:
        if transport is not None:
            transport.close()
    return TidyReport(reminded=reminded, pruned=len(stale), not_sent=not_sent)

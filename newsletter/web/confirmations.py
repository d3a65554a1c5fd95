"""Confirmation mails (and the welcome a reader gets on confirming), sent on a thread of their own
after the visitor has the answer.

So a signup is answered in the same time whether the address was new, pending or active (nobody
learns who subscribed by timing the form), and a slow relay never holds a web worker. A mail is
recorded as sent only once the server has taken it; when it fails, nothing is recorded, so the
reader's next signup sends it again. While the relay is failing (no session, or MAIL or DATA
refused: no address could get through) every signup is answered 503 "try again later" instead of
a promise of mail that will not come; a failure that is the message's own (SendResult.own_failure:
a recipient refused or not checked in time, content refused as 5.6.x/5.7.x) is that signup's own
(it stays pending), so nobody can close the form with addresses or names of their choosing."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..config import Settings
from ..content.render import render_welcome
from ..db.models import DeliveryStatus
from ..delivery.compose import confirmation_message, one_off_message
from ..delivery.signing import DkimSigner
from ..delivery.tokens import Tokens
from ..delivery.transport import Envelope, SendResult
from ..links import Links, confirmation_key, welcome_key
from ..store import Store
from ..subscribers.records import OneMail, Preferences

__all__ = ["ConfirmationMailer", "RELAY_RETRY"]

log = logging.getLogger("newsletter.web")
RELAY_RETRY = timedelta(seconds=60)  # after the relay failed, signups wait this long before one is tried


@dataclass(frozen=True)
class _Due:
    subscriber_id: int
    email: str
    name: str | None
    choice: Preferences | None = None  # made on the form: carried in the confirm link
    welcome: bool = False  # the welcome, once confirmed (SPEC 10), not the confirmation


class ConfirmationMailer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        tokens: Tokens,
        send_mail: Callable[[Envelope, bytes], SendResult],
        *,
        now: Callable[[], datetime],
        signer: DkimSigner | None,
        mail_from: Callable[[int], str],
    ) -> None:
        self.settings, self.store, self.tokens = settings, store, tokens
        self.links = Links(settings.newsletter.base_url)
        self.send_mail, self.now, self.signer, self.mail_from = send_mail, now, signer, mail_from
        self._queue: queue.Queue[_Due] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: set[int] = set()  # queued or being sent: one mail per subscriber at a time
        self._failed_at: datetime | None = None
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def relay_down(self) -> float | None:
        """Seconds to wait before a signup is worth taking, while the last mail failed; else None."""
        with self._lock:
            if self._failed_at is None:
                return None
            left = (self._failed_at + RELAY_RETRY - self.now()).total_seconds()
            return left if left > 0 else None

    def submit(
        self,
        subscriber_id: int,
        email: str,
        name: str | None,
        choice: Preferences | None = None,
        *,
        welcome: bool = False,
    ) -> None:
        with self._lock:
            if subscriber_id in self._waiting:
                return
            self._waiting.add(subscriber_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="confirmations", daemon=True)
                self._thread.start()
        self._queue.put(_Due(subscriber_id, email, name, choice, welcome))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every mail handed in has been sent or has failed."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._waiting, timeout=timeout)

    def _run(self) -> None:
        while True:
            due = self._queue.get()
            try:
                result = self._send(due)
            except Exception as exc:  # noqa: BLE001 - one reader's mail never stops the others'
                result = SendResult(DeliveryStatus.FAILED, f"{type(exc).__name__}: {exc}")
            relay_failed = result.status != DeliveryStatus.SENT and not result.own_failure
            with self._idle:
                self._failed_at = self.now() if relay_failed else None
                self._waiting.discard(due.subscriber_id)
                self._idle.notify_all()
            if result.status != DeliveryStatus.SENT:
                log.warning(
                    "confirmation mail to subscriber %s not accepted: %s", due.subscriber_id, result.reply
                )

    def _send(self, due: _Due) -> SendResult:
        if due.welcome:
            return self._welcome(due)
        message = confirmation_message(
            self.settings,
            to_email=due.email,
            to_name=due.name,
            confirm_url=self.links.confirm(self.tokens.confirm(due.subscriber_id, _carried(due.choice))),
            signer=self.signer,
        )
        sent_at = self.now()
        key = confirmation_key(due.subscriber_id, sent_at)
        result = self.send_mail(Envelope(self.mail_from(due.subscriber_id), due.email, key), message)
        if result.status == DeliveryStatus.SENT:
            self.store.confirmation_sent(due.subscriber_id, now=sent_at)
        return result

    def _welcome(self, due: _Due) -> SendResult:
        """The one welcome: taken first, so a confirm clicked twice mails it once; given back
        when the relay did not take it."""
        sent_at = self.now()
        if not self.store.claim_mail(due.subscriber_id, OneMail.WELCOME, now=sent_at):
            return SendResult(DeliveryStatus.SENT, "welcomed before")
        latest = self.store.archived_issues(limit=1)
        rendered = render_welcome(
            self.settings,
            preferences_url=self.links.preferences(self.tokens.preferences(due.subscriber_id)),
            latest_issue_url=self.links.archived_issue(latest[0].id) if latest else None,
        )
        message = one_off_message(
            self.settings, rendered, to_email=due.email, to_name=due.name, signer=self.signer
        )
        key = welcome_key(due.subscriber_id, sent_at)
        result = self.send_mail(Envelope(self.mail_from(due.subscriber_id), due.email, key), message)
        if result.status != DeliveryStatus.SENT and not result.own_failure:
            self.store.release_mail(due.subscriber_id, OneMail.WELCOME)
        return result


def _carried(choice: Preferences | None) -> list[object]:
    """[sections or None for all, frequency]: what `check_preferences` reads again at confirmation."""
    return [] if choice is None else [list(choice.sections) or None, choice.frequency.value]

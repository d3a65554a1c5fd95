"""The send step and the claim loop, once for both drivers: the connection threads of one process
(`engine`), and the worker processes that one owner answers over pipes (`workers`, `owner`).

A connection's step, for each row its desk hands it: compose, have the row marked in flight,
choose the envelope, send, hand the fate back to be recorded with the next request. The desk is
what differs: a queue and the ledger thread, or a pipe to the owner."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import NewsletterError, TransportError
from ..links import issue_copy_key
from .compose import MessageTemplate, Recipient
from .pacing import reconnect_wait
from .progress import Progress
from .records import WHOLE_ISSUE, DeliveryStore, DeliveryTarget
from .replies import SendResult
from .tokens import Tokens
from .transport import Envelope, Transport

__all__ = ["PAUSE_CHECK_SECONDS", "SESSION_FAILURES", "ClaimLoop", "Desk", "SenderJob", "send_over"]

SESSION_FAILURES = 3  # sessions in a row a connection may fail to open before it gives the send up
PAUSE_CHECK_SECONDS = 0.5  # how often a running send reads whether its issue was paused


@dataclass(frozen=True)
class SenderJob:
    """What a connection needs to turn a row into a message on the wire (a worker process
    inherits it at the fork)."""

    connect: Callable[[], Transport]
    template: MessageTemplate  # the issue's own rendering (every section)
    tokens: Tokens
    mail_from: Callable[[int], str]
    issue_id: int
    reconnect_seconds: float = 2.0
    variants: Mapping[int, MessageTemplate] = field(default_factory=dict)  # by issue_variants id

    def open(self) -> Transport:
        try:
            return self.connect()
        except NewsletterError:
            raise
        except Exception as exc:
            raise TransportError(f"the mail transport could not be set up: {_named(exc)}") from exc

    def compose(self, target: DeliveryTarget) -> bytes:
        who = target.subscriber_id
        try:
            token = self.tokens.unsubscribe(who)
            template = self.template if target.variant == WHOLE_ISSUE else self.variants[target.variant]
            return template.compose(Recipient(who, target.email, target.name, token))
        except Exception as exc:
            raise NewsletterError(f"composing the message to subscriber {who} failed: {_named(exc)}") from exc

    def envelope(self, target: DeliveryTarget) -> Envelope:
        who = target.subscriber_id
        return Envelope(self.mail_from(who), target.email, issue_copy_key(self.issue_id, who))


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Desk(Protocol):
    """What one connection asks of whoever keeps the ledger."""

    def next(self) -> DeliveryTarget | None:
        """The next row to send, waiting for one; None: this connection is done."""

    def mark(self, target: DeliveryTarget) -> bool:
        """Whether the row may go on the wire: it is durably `sending` (with the previous message's
        fate recorded in the same transaction); False if skipped, lost, or the send is stopping."""

    def sent(self, target: DeliveryTarget, result: SendResult) -> None:
        """The server's answer, recorded with the next request."""

    def unsent(self, target: DeliveryTarget, why: str) -> None:
        """No session: the row never left, so it goes back."""


def send_over(desk: Desk, job: SenderJob, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """One connection's life: the send step for each row the desk hands it. A session that cannot
    be opened puts its row back and waits longer each time; the SESSION_FAILURES-th in a row ends
    the connection with that failure. What it raises says what failed: the relay, the transport,
    composing, or (from the desk) the database."""
    transport = job.open()
    try:
        failures = 0
        while (target := desk.next()) is not None:
            message = job.compose(target)
            if not desk.mark(target):
                continue
            try:
                result = transport.send(job.envelope(target), message)
            except TransportError as exc:  # no session: nothing was sent
                desk.unsent(target, f"not sent: {exc}")
                failures += 1
                if failures >= SESSION_FAILURES:
                    raise
                sleep(reconnect_wait(job.reconnect_seconds, failures))
                continue
            except Exception as exc:  # a bug in the transport: the row stays in flight (unknown)
                raise TransportError(f"the mail transport failed: {_named(exc)}") from exc
            failures = 0
            desk.sent(target, result)
    finally:
        transport.close()


class ClaimLoop:
    """When to claim, how many rows, and when the send is over: the one claim loop of both drivers.
    Each round a driver asks `halts()`, then `wanted(held)`, claims that many in its next group
    commit, and tells `got(count)`."""

    def __init__(self, store: DeliveryStore, progress: Progress, *, should_stop: Callable[[], bool]) -> None:
        self.store, self.progress, self.should_stop = store, progress, should_stop
        self.issue_id = progress.report.issue_id
        self.ending = False  # nothing more to claim
        self.claim_after = 0.0  # time.monotonic() before which no claim is due
        self.waited = 0.0  # seconds waited in this send for deferred rows to come due
        self.next_pause_check = 0.0

    def refuse_if_paused(self) -> None:
        """A send never begins on a paused issue."""
        issue = self.issue_id
        if self.store.is_paused(issue):
            raise NewsletterError(
                f"issue {issue} is paused; 'newsletter resume --issue {issue}' continues its send"
            )

    def halts(self) -> bool:
        """Whether the send claims no more: it halted, the operator stopped it (a signal), or paused
        its issue (read from the database every PAUSE_CHECK_SECONDS, not per claim)."""
        p = self.progress
        if p.halt.is_set():
            return True
        if self.should_stop():
            p.report.stopped = True
        elif time.monotonic() >= self.next_pause_check:
            self.next_pause_check = time.monotonic() + PAUSE_CHECK_SECONDS
            if not self.store.is_paused(self.issue_id):
                return False
            p.report.paused = True
        else:
            return False
        p.halt.set()
        return True

    def wanted(self, held: int) -> int:
        """How many rows to claim now, with `held` claimed and not yet handed to a connection: in
        batches, when they run low; none while waiting, or once the send is over."""
        if self.ending or self.progress.halt.is_set() or time.monotonic() < self.claim_after:
            return 0
        batch = self.progress.batch()
        return batch - held if held <= batch // 4 else 0

    def got(self, count: int) -> None:
        """A claim brought `count` rows. None: wait for the rows out with connections, then for
        deferred rows to come due (at most `max_wait_seconds` in all), or end."""
        if count:
            return
        p, o = self.progress, self.progress.options
        if not p.idle:
            self.claim_after = time.monotonic() + 0.01
            return
        due = self.store.next_deferred_at(self.issue_id)
        if due is None or not o.wait_for_retries:
            self.ending = True
            return
        pause = min(1.0, max(0.0, (due - p.now()).total_seconds()))
        if self.waited + pause > o.max_wait_seconds:
            self.ending = True
            return
        self.claim_after = time.monotonic() + (pause if pause > 0 else 0.05)
        self.waited += pause

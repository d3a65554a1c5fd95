"""The send loop: make the delivery rows, claim each, hand it to the transport, record its fate.

Progress is the rows' states, never a "last id sent" counter: a row is `sending` only from
the claim (just before the transport is handed the message) until its reply is recorded.
A sender that dies leaves at most the row it had in flight `sending`; the next sender marks
it `unknown` and sends everything else exactly once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .compose import MessageTemplate, Recipient
from .errors import TransportError
from .models import DeliveryStatus
from .store import DeliveryTarget
from .tokens import Tokens
from .transport import Envelope, SendResult, Transport

__all__ = ["DeliveryStore", "SendOptions", "SendReport", "send_issue", "backoff_seconds"]


class DeliveryStore(Protocol):
    """What the send loop needs of the database (newsletter.store.Store provides it)."""

    def start_send(self, issue_id: int) -> int: ...
    def mark_in_flight_unknown(self, issue_id: int) -> int: ...
    def requeue_unknown(self, issue_id: int) -> int: ...
    def due_targets(
        self, issue_id: int, *, now: datetime, after: int, limit: int
    ) -> list[DeliveryTarget]: ...
    def claim(self, issue_id: int, subscriber_id: int, *, now: datetime) -> bool: ...
    def record(
        self,
        issue_id: int,
        subscriber_id: int,
        *,
        status: DeliveryStatus,
        reply: str,
        attempts: int,
        next_attempt_at: datetime | None,
        now: datetime,
    ) -> None: ...
    def next_deferred_at(self, issue_id: int) -> datetime | None: ...
    def finish_issue_if_done(self, issue_id: int, *, now: datetime) -> bool: ...


@dataclass(frozen=True)
class SendOptions:
    max_attempts: int = 3
    batch_size: int = 500
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 1800.0
    # Wait within this send for deferred rows to come due (else a later `send` retries them).
    wait_for_retries: bool = True
    max_wait_seconds: float = 3600.0


@dataclass
class SendReport:
    issue_id: int
    added: int = 0
    unknown_found: int = 0
    requeued: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    stopped: bool = False

    def add(self, status: DeliveryStatus) -> None:
        self.counts[status.value] = self.counts.get(status.value, 0) + 1

    @property
    def sent(self) -> int:
        return self.counts.get(DeliveryStatus.SENT.value, 0)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def backoff_seconds(
    attempts: int, options: SendOptions, *, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: base, 2x base, 4x base ... each within +-20 %."""
    raw = options.retry_base_seconds * 2.0 ** max(0, attempts - 1)
    return min(options.retry_max_seconds, raw) * (0.8 + 0.4 * rng())


def send_issue(
    store: DeliveryStore,
    transport: Transport,
    template: MessageTemplate,
    tokens: Tokens,
    *,
    issue_id: int,
    mail_from: str,
    options: SendOptions = SendOptions(),
    resend_unknown: bool = False,
    now: Callable[[], datetime] = _utcnow,
    sleep: Callable[[float], None] = time.sleep,
    on_result: Callable[[DeliveryStatus], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SendReport:
    report = SendReport(issue_id=issue_id)
    report.unknown_found = store.mark_in_flight_unknown(issue_id)
    if resend_unknown:
        report.requeued = store.requeue_unknown(issue_id)
    report.added = store.start_send(issue_id)
    waited = 0.0
    while True:
        if not _send_due(
            store,
            transport,
            template,
            tokens,
            report,
            issue_id=issue_id,
            mail_from=mail_from,
            options=options,
            now=now,
            on_result=on_result,
            should_stop=should_stop,
        ):
            report.stopped = True
            break
        due = store.next_deferred_at(issue_id)
        if due is None or not options.wait_for_retries:
            break
        pause = max(0.0, (due - now()).total_seconds())
        if waited + pause > options.max_wait_seconds:
            break
        sleep(pause)
        waited += pause
    report.finished = store.finish_issue_if_done(issue_id, now=now())
    return report


def _send_due(
    store: DeliveryStore,
    transport: Transport,
    template: MessageTemplate,
    tokens: Tokens,
    report: SendReport,
    *,
    issue_id: int,
    mail_from: str,
    options: SendOptions,
    now: Callable[[], datetime],
    on_result: Callable[[DeliveryStatus], None] | None,
    should_stop: Callable[[], bool],
) -> bool:
    """One pass over every row due now; False if told to stop part way."""
    after = 0
    while True:
        batch: Sequence[DeliveryTarget] = store.due_targets(
            issue_id, now=now(), after=after, limit=options.batch_size
        )
        if not batch:
            return True
        for target in batch:
            if should_stop():
                return False
            after = target.subscriber_id
            if not store.claim(issue_id, target.subscriber_id, now=now()):
                report.add(DeliveryStatus.SKIPPED)
                continue
            message = template.compose(
                Recipient(
                    target.subscriber_id, target.email, target.name, tokens.unsubscribe(target.subscriber_id)
                )
            )
            envelope = Envelope(mail_from, target.email, f"issue-{issue_id}/{target.subscriber_id:08d}")
            try:
                result = transport.send(envelope, message)
            except TransportError:
                # Nothing reached the server: the row goes back to waiting, untouched.
                store.record(
                    issue_id,
                    target.subscriber_id,
                    status=DeliveryStatus.PENDING,
                    reply="not sent: no connection to the mail server",
                    attempts=target.attempts,
                    next_attempt_at=None,
                    now=now(),
                )
                raise
            status = _record(store, result, target, issue_id=issue_id, options=options, now=now())
            report.add(status)
            if on_result:
                on_result(status)


def _record(
    store: DeliveryStore,
    result: SendResult,
    target: DeliveryTarget,
    *,
    issue_id: int,
    options: SendOptions,
    now: datetime,
) -> DeliveryStatus:
    attempts = target.attempts + 1
    status, next_at = result.status, None
    if status == DeliveryStatus.DEFERRED:
        if attempts >= options.max_attempts:
            status = DeliveryStatus.FAILED
        else:
            next_at = now + timedelta(seconds=backoff_seconds(attempts, options))
    store.record(
        issue_id,
        target.subscriber_id,
        status=status,
        reply=result.reply,
        attempts=attempts,
        next_attempt_at=next_at,
        now=now,
    )
    return status

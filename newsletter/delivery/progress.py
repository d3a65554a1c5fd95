"""What one send knows as it goes, whichever driver runs it: its options, its report, the rows out
with a connection, why it stopped, and the fate each reply earns (a retry's backoff, a throttle
that spares the row's attempts, a lost reply)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..db.models import DeliveryStatus
from .pacing import RateLimiter, backoff_seconds
from .records import DeliveryTarget, Fate
from .replies import SendResult

__all__ = ["Outcome", "Progress", "SendOptions", "SendReport"]


@dataclass(frozen=True)
class SendOptions:
    connections: int = 1
    max_attempts: int = 3
    rate_per_second: float = 0  # 0: as fast as the server takes them
    batch_size: int = 200
    lease_seconds: float = 600
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 1800.0
    throttle_retry_seconds: float = 5.0
    # A throttle retries the row without using up an attempt this many times in one send; after
    # that it is the row's own 4xx (an attempt used, its own backoff), so no row holds a send open.
    throttles_per_row: int = 5
    # After a throttling reply the pace recovers by a quarter every this many quiet seconds.
    throttle_recover_seconds: float = 5.0
    # A connection that cannot open a session waits this long, doubled at each failure (at most
    # 30 s), and gives the send up after three failures in a row.
    reconnect_seconds: float = 2.0
    # Wait within this send for deferred rows to come due (else a later `send` retries them).
    wait_for_retries: bool = True
    max_wait_seconds: float = 3600.0
    # SQLite: one sender per issue; a second one refuses, or waits with `wait_for_sender`.
    wait_for_sender: bool = False
    heartbeat_seconds: float = 2.0
    stale_after_seconds: float = 30.0
    # No reply after the final dot: "unknown" (the operator decides) or "retry" (maybe twice).
    lost_reply: str = "unknown"
    # Worker processes that compose, sign and speak SMTP over a share of the connections; this
    # process keeps the ledger. 1: the connections are threads of this process.
    processes: int = 1

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)


@dataclass
class SendReport:
    issue_id: int
    added: int = 0
    unknown_found: int = 0
    requeued: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    stopped: bool = False
    paused: bool = False  # the operator paused the issue: this send stopped claiming and ended
    throttled: int = 0
    seconds: float = 0.0
    variants: int = 1  # renderings the messages were composed from (SPEC 8)

    def add(self, status: DeliveryStatus) -> None:
        self.counts[status.value] = self.counts.get(status.value, 0) + 1

    @property
    def sent(self) -> int:
        return self.counts.get(DeliveryStatus.SENT.value, 0)


@dataclass
class Outcome:
    target: DeliveryTarget
    status: DeliveryStatus
    reply: str
    attempts: int
    next_attempt_at: datetime | None

    @property
    def fate(self) -> Fate:
        return Fate(self.target.subscriber_id, self.status, self.reply, self.attempts, self.next_attempt_at)


class Progress:
    """One send's shared state: the report, the rows claimed and not yet recorded (`busy`), the
    pace, and the halt (the first fatal failure, or the operator's stop) every part obeys."""

    def __init__(
        self,
        issue_id: int,
        options: SendOptions,
        *,
        now: Callable[[], datetime],
        on_result: Callable[[DeliveryStatus], None] | None,
    ) -> None:
        self.options, self.now, self.on_result = options, now, on_result
        self.report = SendReport(issue_id=issue_id)
        self.limiter = RateLimiter(options.rate_per_second, recover_after=options.throttle_recover_seconds)
        self.busy = 0  # claimed rows handed to a connection whose fate is not yet committed
        self.lock = threading.Lock()
        self.throttles: collections.Counter[int] = collections.Counter()  # per subscriber, this send
        self.fatal: BaseException | None = None
        self.halt = threading.Event()

    def claimed(self, count: int) -> None:
        with self.lock:
            self.busy += count

    @property
    def idle(self) -> bool:
        """No claimed row is out with a connection: all this send holds is recorded."""
        with self.lock:
            return self.busy == 0

    def done(self, status: DeliveryStatus | None) -> None:
        """A claimed row is off the connections' hands: recorded as `status`, or given back (None)."""
        with self.lock:
            self.busy -= 1
            if status is not None:
                self.report.add(status)
        if status is not None and self.on_result is not None:
            self.on_result(status)

    def stop_with(self, exc: BaseException) -> None:
        """The send cannot go on: the first failure is the one reported."""
        with self.lock:
            if self.fatal is None:
                self.fatal = exc
        self.halt.set()

    def batch(self) -> int:
        """How many rows to hold: a claim's size, never more than a minute at the current rate."""
        size = self.options.batch_size
        rate = self.limiter.rate
        if rate is not None:
            size = min(size, max(1, int(rate * 60)))
        return size

    def outcome(self, target: DeliveryTarget, result: SendResult) -> Outcome:
        """What the server's reply makes of the row: a throttle slows the pool and retries it soon
        without using up an attempt; a deferral retries it after a backoff, or fails it at the
        last attempt; a lost reply stays `unknown` unless the operator prefers a retry."""
        now = self.now()
        status, attempts, next_at = result.status, target.attempts + 1, None
        if result.throttled and self._free_throttle(target):
            self.limiter.throttle()
            return Outcome(
                target,
                DeliveryStatus.DEFERRED,
                result.reply,
                target.attempts,
                now + timedelta(seconds=self.options.throttle_retry_seconds),
            )
        if status == DeliveryStatus.UNKNOWN and self.options.lost_reply == "retry":
            status = DeliveryStatus.DEFERRED  # the operator prefers a rare duplicate to a loss
        if status == DeliveryStatus.DEFERRED:
            if attempts >= self.options.max_attempts:
                status = DeliveryStatus.FAILED
            else:
                next_at = now + timedelta(seconds=backoff_seconds(attempts, self.options))
        return Outcome(target, status, result.reply, attempts, next_at)

    def _free_throttle(self, target: DeliveryTarget) -> bool:
        """Whether a throttle of this row still slows the pool and spares its attempts."""
        with self.lock:
            self.throttles[target.subscriber_id] += 1
            free = self.throttles[target.subscriber_id] <= self.options.throttles_per_row
            if free:
                self.report.throttled += 1
        return free

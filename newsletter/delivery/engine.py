"""The send loop: claim rows, mark each in flight, hand it to a connection, record its fate.

Progress is the rows' states, never a "last id sent" counter. A row is claimed in batches (a
lease: it stays `pending`), marked `sending` in a committed transaction just before its message
goes on the wire, and recorded when the reply comes. Recording is cheap because one thread
commits for every connection at once: "message k's reply, and message k+1 in flight" for all
of them is one transaction (the group commit, `Ledger.commit`). So a sender killed at any instant
leaves at most one `sending` row per connection, which the next sender reports as `unknown`;
every other row is sent exactly once.

Threads, not asyncio: the connections spend their time in socket calls and the ledger in the
database driver, both of which release the GIL; `make bench` shows where that stops scaling."""

from __future__ import annotations

import collections
import multiprocessing.connection
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Protocol

from ..db.models import DeliveryStatus
from ..errors import NewsletterError, SenderFenced, TransportError
from .compose import MessageTemplate, Recipient
from .records import DeliveryTarget, Enrolment, Fate, Group, LedgerResult, MarkResult
from .tokens import Tokens
from .transport import Envelope, SendResult, Transport
from .workers import STOP, Answer, Ask, SenderJob, WorkerPool, reconnect_wait, split_slots

__all__ = [
    "DeliveryStore",
    "Ledger",
    "RateLimiter",
    "SendOptions",
    "SendReport",
    "backoff_seconds",
    "send_issue",
]


class Ledger(Protocol):
    """The send's hot path in the database, one group commit at a time (`delivery.ledger` is the
    SQL one). Every row it touches is one this sender holds."""

    def commit(self, group: Group) -> LedgerResult: ...
    def close(self) -> None: ...


class DeliveryStore(Protocol):
    """What the send loop needs of the database (delivery.claims.DeliveryRepository provides it)."""

    is_sqlite: bool

    def register_sender(self, enrolment: Enrolment) -> int: ...
    def deregister_sender(self, sender_id: str) -> None: ...
    def requeue_unknown(self, issue_id: int) -> int: ...
    def start_send(self, issue_id: int) -> int: ...
    def release(self, issue_id: int, sender_id: str, subscriber_ids: list[int]) -> None: ...
    def ledger(self, issue_id: int, sender_id: str) -> Ledger: ...
    def next_deferred_at(self, issue_id: int) -> datetime | None: ...
    def finish_issue_if_done(self, issue_id: int, *, now: datetime) -> bool: ...
    def is_paused(self, issue_id: int) -> bool: ...


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

    def add(self, status: DeliveryStatus) -> None:
        self.counts[status.value] = self.counts.get(status.value, 0) + 1

    @property
    def sent(self) -> int:
        return self.counts.get(DeliveryStatus.SENT.value, 0)


def backoff_seconds(
    attempts: int, options: SendOptions, *, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: base, 2x base, 4x base ... each within +-20 %."""
    raw = options.retry_base_seconds * 2.0 ** max(0, attempts - 1)
    return min(options.retry_max_seconds, raw) * (0.8 + 0.4 * rng())


class RateLimiter:
    """A token bucket shared by every connection. A throttling reply halves the rate, never below a
    floor (a tenth of the rate measured before the first throttle); it then recovers by a quarter
    every few quiet seconds, up to the configured rate (or unlimited)."""

    FLOOR_SHARE = 0.1
    MIN_FLOOR = 0.5

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        recover_after: float = 5.0,
    ) -> None:
        self.limit = rate if rate > 0 else None
        self.recover_after = recover_after
        self.rate = self.limit
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next = clock()
        self._last_throttle = float("-inf")
        self._recent: list[float] = []
        self.floor: float | None = None  # set at the first throttle

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            self._recover(now)
            self._recent.append(now)
            if len(self._recent) > 256:
                del self._recent[:128]
            if self.rate is None:
                return
            wait = self._next - now
            self._next = max(now, self._next) + 1.0 / self.rate
        if wait > 0:
            self._sleep(wait)

    def throttle(self) -> None:
        with self._lock:
            now = self._clock()
            if now - self._last_throttle < 1.0:
                return  # one burst of replies is one signal
            self._last_throttle = now
            observed = self._observed(now)
            if self.floor is None:
                before = observed if self.rate is None else min(self.rate, observed)
                self.floor = max(self.MIN_FLOOR, before * self.FLOOR_SHARE)
            current = self.rate if self.rate is not None else observed
            self.rate = max(self.floor, current / 2)

    def _observed(self, now: float) -> float:
        window = [t for t in self._recent if now - t <= 2.0]
        return max(1.0, len(window) / 2.0)

    def _recover(self, now: float) -> None:
        if self.rate is None or now - self._last_throttle < self.recover_after:
            return
        self._last_throttle = now - self.recover_after / 2  # the next step comes a little later
        self.rate *= 1.25
        if self.limit is not None and self.rate >= self.limit:
            self.rate = self.limit
        elif self.limit is None and self.rate > 100_000:
            self.rate = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def process_alive(host: str, pid: int) -> bool | None:
    """Whether a sender's process lives: known on this host, unknown (None) elsewhere."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Outcome:
    target: DeliveryTarget
    status: DeliveryStatus
    reply: str
    attempts: int
    next_attempt_at: datetime | None

    @property
    def fate(self) -> Fate:
        return Fate(self.target.subscriber_id, self.status, self.reply, self.attempts, self.next_attempt_at)


@dataclass
class _Request:
    record: _Outcome | None = None
    mark: DeliveryTarget | None = None
    unmark: tuple[DeliveryTarget, str] | None = None
    claim: tuple[int, timedelta] | None = None  # (how many, lease)
    claimed: list[DeliveryTarget] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    mark_result: MarkResult | None = None
    error: BaseException | None = None


class _GroupCommitter(threading.Thread):
    """Commits the connections' requests in groups: one transaction for all that are waiting."""

    def __init__(self, ledger: Ledger, *, heartbeat_seconds: float, now: Callable[[], datetime]) -> None:
        super().__init__(name="ledger", daemon=True)
        self.ledger, self.heartbeat_seconds, self.now = ledger, heartbeat_seconds, now
        self.requests: queue.Queue[_Request | None] = queue.Queue()
        self.failure: BaseException | None = None

    def submit(self, request: _Request) -> _Request:
        if self.failure is not None:
            request.error = self.failure
            return request
        self.requests.put(request)
        while not request.done.wait(0.5):
            if not self.is_alive():  # it stopped before reaching this request
                request.error = self.failure or NewsletterError("the send stopped")
                break
        return request

    def run(self) -> None:
        last_beat = time.monotonic()
        while True:
            try:
                first = self.requests.get(timeout=self.heartbeat_seconds)
            except queue.Empty:
                first = _Request()  # nothing to record: a heartbeat alone
            group = [first]
            while True:
                try:
                    group.append(self.requests.get_nowait())
                except queue.Empty:
                    break
            stopping = any(r is None for r in group)
            work = [r for r in group if r is not None]
            try:
                self._commit(work, beat=time.monotonic() - last_beat >= self.heartbeat_seconds)
            except BaseException as exc:  # the database failed: every waiter learns it
                self.failure = exc
                for r in work:
                    r.error = exc
            for r in work:
                r.done.set()
            if time.monotonic() - last_beat >= self.heartbeat_seconds:
                last_beat = time.monotonic()
            if stopping or self.failure is not None:
                self._fail_waiting()
                return

    def _commit(self, work: list[_Request], *, beat: bool) -> None:
        if not work and not beat:
            return
        asking = next((r for r in work if r.claim is not None), None)  # one claim loop: one at most
        many, lease = asking.claim if asking is not None and asking.claim is not None else (0, timedelta(0))
        result = self.ledger.commit(
            Group(
                self.now(),
                fates=[r.record.fate for r in work if r.record is not None],
                unmarks=[(r.unmark[0].subscriber_id, r.unmark[1]) for r in work if r.unmark is not None],
                marks=[r.mark.subscriber_id for r in work if r.mark is not None],
                claim=many,
                lease=lease,
                beat=beat,
            )
        )
        for r in work:
            if r.mark is not None:
                r.mark_result = result.marks[r.mark.subscriber_id]
        if asking is not None:
            asking.claimed = result.claimed

    def _fail_waiting(self) -> None:
        while True:
            try:
                r = self.requests.get_nowait()
            except queue.Empty:
                return
            if r is not None:
                r.error = self.failure or NewsletterError("the send stopped")
                r.done.set()

    def stop(self) -> None:
        self.requests.put(None)
        self.join()


_DONE = object()
PAUSE_CHECK_SECONDS = 0.5


class _Send:
    """One run of `send_issue`: this process's sender row, its connections (threads, or worker
    processes answered by one `_Owner`), and what it reports."""

    def __init__(
        self,
        store: DeliveryStore,
        connect: Callable[[], Transport],
        template: MessageTemplate,
        tokens: Tokens,
        *,
        issue_id: int,
        mail_from: Callable[[int], str],
        options: SendOptions,
        now: Callable[[], datetime],
        sleep: Callable[[float], None],
        on_result: Callable[[DeliveryStatus], None] | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.store, self.connect, self.template, self.tokens = store, connect, template, tokens
        self.issue_id, self.mail_from, self.options = issue_id, mail_from, options
        self.now, self.sleep, self.on_result, self.should_stop = now, sleep, on_result, should_stop
        self.id = str(uuid.uuid4())
        self.report = SendReport(issue_id=issue_id)
        self.limiter = RateLimiter(options.rate_per_second, recover_after=options.throttle_recover_seconds)
        self.work: queue.Queue[object] = queue.Queue()
        self.busy = 0  # claimed rows handed to a connection whose fate is not yet committed
        self.lock = threading.Lock()
        self.throttles: collections.Counter[int] = collections.Counter()  # per subscriber, this send
        self.fatal: BaseException | None = None
        self.halt = threading.Event()

    # -- the whole send -----------------------------------------------------------------------

    def run(self, *, resend_unknown: bool) -> SendReport:
        started = time.monotonic()
        self._register()
        pool: WorkerPool | None = None
        try:
            if resend_unknown:
                self.report.requeued = self.store.requeue_unknown(self.issue_id)
            self.report.added = self.store.start_send(self.issue_id)
            if self.options.processes > 1:  # forked before any thread of this send exists
                job = SenderJob(
                    self.connect,
                    self.template,
                    self.tokens,
                    self.mail_from,
                    self.issue_id,
                    reconnect_seconds=self.options.reconnect_seconds,
                )
                slots = split_slots(self.options.connections, self.options.processes)
                pool = WorkerPool(job, slots_per_worker=slots)
        except BaseException:
            self.store.deregister_sender(self.id)
            raise
        if pool is not None:
            return self._run_owner(pool, started)
        ledger = _GroupCommitter(
            self.store.ledger(self.issue_id, self.id),
            heartbeat_seconds=self.options.heartbeat_seconds,
            now=self.now,
        )
        ledger.start()
        workers = [
            threading.Thread(target=self._connection, args=(ledger,), name=f"smtp-{i}", daemon=True)
            for i in range(self.options.connections)
        ]
        try:
            for w in workers:
                w.start()
            self._claim_loop(ledger)
        finally:
            self.halt.set()
            leftovers = self._drain()
            for _ in workers:
                self.work.put(_DONE)
            for w in workers:
                if w.is_alive():
                    w.join()
            ledger.stop()
            ledger.ledger.close()
            self.store.release(self.issue_id, self.id, leftovers)
            self.store.deregister_sender(self.id)
        return self._ending(ledger.failure, started)

    def _ending(self, failure: BaseException | None, started: float) -> SendReport:
        if self.fatal is not None:
            raise self.fatal
        if isinstance(failure, SenderFenced):
            raise failure
        if failure is not None:
            raise NewsletterError(f"the database failed during the send: {failure}") from failure
        self.report.finished = self.store.finish_issue_if_done(self.issue_id, now=self.now())
        self.report.seconds = time.monotonic() - started
        return self.report

    def _register(self) -> None:
        waited = 0.0
        while True:
            try:
                self.report.unknown_found = self.store.register_sender(
                    Enrolment(
                        self.issue_id,
                        self.id,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        now=self.now(),
                        exclusive=self.store.is_sqlite,
                        stale_after=timedelta(seconds=self.options.stale_after_seconds),
                        is_alive=process_alive,
                    )
                )
                return
            except NewsletterError:
                if (
                    not self.options.wait_for_sender
                    or self.should_stop()
                    or waited > self.options.max_wait_seconds
                ):
                    raise
                self.sleep(1.0)
                waited += 1.0

    def _claim_loop(self, ledger: _GroupCommitter) -> None:
        waited = 0.0
        next_pause_check = 0.0
        while not self.halt.is_set():
            if self.should_stop():
                self.report.stopped = True
                return
            if time.monotonic() >= next_pause_check:  # a read every half second, not per claim
                next_pause_check = time.monotonic() + PAUSE_CHECK_SECONDS
                if self.store.is_paused(self.issue_id):
                    self.report.paused = True
                    return
            if self.work.qsize() >= self._batch():
                self.sleep(0.005)
                continue
            now = self.now()
            request = ledger.submit(
                _Request(claim=(self._batch(), timedelta(seconds=self.options.lease_seconds)))
            )
            if isinstance(request.error, SenderFenced):
                raise request.error
            if request.error is not None:
                raise NewsletterError(f"the database failed during the send: {request.error}")
            batch = request.claimed
            for target in batch:
                with self.lock:
                    self.busy += 1
                self.work.put(target)
            if batch:
                continue
            with self.lock:
                idle = self.busy == 0
            if not idle:
                self.sleep(0.01)
                continue
            due = self.store.next_deferred_at(self.issue_id)
            if due is None or not self.options.wait_for_retries:
                return
            pause = min(1.0, max(0.0, (due - now).total_seconds()))
            if waited + pause > self.options.max_wait_seconds:
                return
            self.sleep(pause if pause > 0 else 0.05)
            waited += pause

    def _batch(self) -> int:
        size = self.options.batch_size
        rate = self.limiter.rate
        if rate is not None:  # never hold more rows than a minute of sending at the current rate
            size = min(size, max(1, int(rate * 60)))
        return size

    def _drain(self) -> list[int]:
        """Rows claimed but never handed to a connection: give them back."""
        left: list[int] = []
        while True:
            try:
                item = self.work.get_nowait()
            except queue.Empty:
                return left
            if isinstance(item, DeliveryTarget):
                left.append(item.subscriber_id)

    # -- worker processes: one thread here owns the ledger and answers every connection ----------

    def _run_owner(self, pool: WorkerPool, started: float) -> SendReport:
        ledger = self.store.ledger(self.issue_id, self.id)
        owner = _Owner(self, ledger, pool.owner_ends)
        try:
            owner.run()
        finally:
            self.halt.set()
            pool.join(timeout=30)
            ledger.close()
            self.store.release(self.issue_id, self.id, owner.leftovers())
            self.store.deregister_sender(self.id)
        return self._ending(owner.failure, started)

    # -- one connection -----------------------------------------------------------------------

    def _connection(self, ledger: _GroupCommitter) -> None:
        try:
            self._connection_loop(ledger)
        except BaseException as exc:  # never die silently: the claim loop would wait for ever
            self._stop_with(exc)

    def _connection_loop(self, ledger: _GroupCommitter) -> None:
        transport = self.connect()
        previous: _Outcome | None = None
        failures = 0
        try:
            while True:
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    self._flush(ledger, previous)  # record it now rather than hold it while idle
                    previous = None
                    item = self.work.get()
                if item is _DONE:
                    break
                assert isinstance(item, DeliveryTarget)
                if self.halt.is_set():  # stopping: not handed to the wire; deregistering releases it
                    self._done(None)
                    continue
                target = item
                self.limiter.acquire()
                message = self.template.compose(
                    Recipient(
                        target.subscriber_id,
                        target.email,
                        target.name,
                        self.tokens.unsubscribe(target.subscriber_id),
                    )
                )
                request = ledger.submit(_Request(record=previous, mark=target))
                if previous is not None:
                    self._done(previous.status)
                previous = None
                if request.error is not None:
                    self._stop_with(request.error)
                    self._done(None)
                    break
                if request.mark_result is not MarkResult.IN_FLIGHT:
                    self._done(DeliveryStatus.SKIPPED if request.mark_result is MarkResult.SKIPPED else None)
                    continue
                envelope = Envelope(
                    self.mail_from(target.subscriber_id),
                    target.email,
                    f"issue-{self.issue_id}/{target.subscriber_id:08d}",
                )
                try:
                    result = transport.send(envelope, message)
                    failures = 0
                except TransportError as exc:  # no session: nothing was sent
                    ledger.submit(_Request(unmark=(target, f"not sent: {exc}")))
                    self._done(None)
                    failures += 1
                    if failures >= 3:
                        self._stop_with(exc)
                        break
                    self.sleep(reconnect_wait(self.options.reconnect_seconds, failures))
                    continue
                previous = self._outcome(target, result)
        finally:
            self._flush(ledger, previous)
            transport.close()

    def _flush(self, ledger: _GroupCommitter, previous: _Outcome | None) -> None:
        if previous is not None:
            request = ledger.submit(_Request(record=previous))
            self._done(previous.status)
            if request.error is not None:
                self._stop_with(request.error)
        return None

    def _done(self, status: DeliveryStatus | None) -> None:
        with self.lock:
            self.busy -= 1
            if status is not None:
                self.report.add(status)
        if status is not None and self.on_result is not None:
            self.on_result(status)

    def _stop_with(self, exc: BaseException) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = exc
        self.halt.set()

    def _free_throttle(self, target: DeliveryTarget) -> bool:
        """Whether a throttle of this row still slows the pool and spares its attempts."""
        with self.lock:
            self.throttles[target.subscriber_id] += 1
            free = self.throttles[target.subscriber_id] <= self.options.throttles_per_row
            if free:
                self.report.throttled += 1
        return free

    def _outcome(self, target: DeliveryTarget, result: SendResult) -> _Outcome:
        now = self.now()
        status, attempts, next_at = result.status, target.attempts + 1, None
        if result.throttled and self._free_throttle(target):
            self.limiter.throttle()
            # the server asked us to slow down: retry soon, without using up an attempt
            return _Outcome(
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
        return _Outcome(target, status, result.reply, attempts, next_at)


@dataclass
class _Slot:
    in_flight: DeliveryTarget | None = None  # marked for it, its fate not yet heard
    handed: DeliveryTarget | None = None  # given to it, not yet asked to be marked


class _Owner:
    """With worker processes, one thread of the send process does what the claim loop, the
    ledger thread and the connection threads do together without them: it waits for the worker
    connections that have asked something, then claims, records, marks and beats the heartbeat
    in one transaction for all of them (the group commit), and only then answers each. No
    thread hand-offs per message: the owner's time goes to the database and the pipes."""

    IDLE_WAIT = 0.01

    def __init__(self, sender: _Send, ledger: Ledger, ends: list[Connection]) -> None:
        self.s, self.ledger = sender, ledger
        self.slots: dict[Connection, _Slot] = {end: _Slot() for end in ends}
        self.backlog: collections.deque[DeliveryTarget] = collections.deque()
        self.failure: BaseException | None = None
        self.ending = False  # nothing more to claim: a slot with nothing gets STOP
        self.claim_after = 0.0
        self.waited = 0.0

    def leftovers(self) -> list[int]:
        held = [slot.handed for slot in self.slots.values() if slot.handed is not None]
        return [t.subscriber_id for t in [*self.backlog, *held]]

    def run(self) -> None:
        s, o = self.s, self.s.options
        last_beat, next_pause_check = time.monotonic(), 0.0
        while self.slots:
            if not s.halt.is_set():
                if s.should_stop():
                    s.report.stopped = True
                    s.halt.set()
                elif time.monotonic() >= next_pause_check:  # a read every half second
                    next_pause_check = time.monotonic() + PAUSE_CHECK_SECONDS
                    if s.store.is_paused(s.issue_id):
                        s.report.paused = True
                        s.halt.set()
            asks: list[tuple[Connection, Ask]] = []
            dead: list[Connection] = []
            for end in multiprocessing.connection.wait(list(self.slots), timeout=self.IDLE_WAIT):
                assert isinstance(end, Connection)
                try:
                    asks.append((end, end.recv()))
                except (EOFError, OSError):  # a worker process died
                    dead.append(end)
            claim = (  # in batches: when the backlog runs low, not a few rows every round
                not s.halt.is_set()
                and not self.ending
                and len(self.backlog) <= s._batch() // 4
                and time.monotonic() >= self.claim_after
            )
            beat = time.monotonic() - last_beat >= o.heartbeat_seconds
            marks = [ask.mark for _, ask in asks if ask.mark is not None and not s.halt.is_set()]
            for _ in marks:  # paced before the transaction: no lock is held while waiting
                s.limiter.acquire()
            results = self._commit(asks, dead, claim=claim, beat=beat)
            if beat:
                last_beat = time.monotonic()
            self._answer(asks, results)
            for end in dead:
                self._bury(end)
            if claim and results is not None and not results[1]:
                self._nothing_claimed()

    def _commit(
        self, asks: list[tuple[Connection, Ask]], dead: list[Connection], *, claim: bool, beat: bool
    ) -> tuple[list[MarkResult | None], list[DeliveryTarget], list[_Outcome | None]] | None:
        """One transaction for everything asked; None if the database failed (nothing committed)."""
        s = self.s
        if not (asks or dead or claim or beat) or self.failure is not None:
            return [None] * len(asks), [], [None] * len(asks)
        outcomes = [s._outcome(*ask.previous) if ask.previous is not None else None for _, ask in asks]
        fates = [o.fate for o in outcomes if o is not None]
        for end in dead:
            lost = self.slots[end].in_flight
            if lost is not None:  # on the wire when its process died: it may have arrived
                why = "in flight when its sender process died"
                fates.append(Fate(lost.subscriber_id, DeliveryStatus.UNKNOWN, why, lost.attempts + 1, None))
        marking = not s.halt.is_set()
        try:
            result = self.ledger.commit(
                Group(
                    s.now(),
                    fates=fates,
                    unmarks=[
                        (a.unmark[0].subscriber_id, a.unmark[1]) for _, a in asks if a.unmark is not None
                    ],
                    marks=[a.mark.subscriber_id for _, a in asks if a.mark is not None and marking],
                    claim=s._batch() - len(self.backlog) if claim else 0,
                    lease=timedelta(seconds=s.options.lease_seconds),
                    beat=beat,
                )
            )
        except BaseException as exc:  # the database failed, or this sender was fenced off
            self.failure = exc
            s.halt.set()
            return None
        marks = [
            result.marks[a.mark.subscriber_id] if a.mark is not None and marking else None for _, a in asks
        ]
        claimed = result.claimed
        with s.lock:
            s.busy += len(claimed)
        self.backlog.extend(claimed)
        return marks, claimed, outcomes

    def _answer(
        self,
        asks: list[tuple[Connection, Ask]],
        results: tuple[list[MarkResult | None], list[DeliveryTarget], list[_Outcome | None]] | None,
    ) -> None:
        s = self.s
        for i, (end, ask) in enumerate(asks):
            slot = self.slots[end]
            mark = outcome = None
            if results is not None:
                mark, outcome = results[0][i], results[2][i]
                if outcome is not None:
                    slot.in_flight = None
                    s._done(outcome.status)
                if ask.unmark is not None:
                    s._done(None)
            if ask.mark is not None:
                slot.handed = None
                if mark is MarkResult.IN_FLIGHT:
                    slot.in_flight = ask.mark
                else:  # skipped, lost to another sender, or not marked at all (stopping)
                    s._done(DeliveryStatus.SKIPPED if mark is MarkResult.SKIPPED else None)
            if ask.fatal is not None:
                s._stop_with(TransportError(ask.fatal))
            following: DeliveryTarget | str | None
            if ask.last:
                if slot.handed is not None:  # never marked: for the other slots
                    self.backlog.appendleft(slot.handed)
                    slot.handed = None
                following = STOP
            else:
                if slot.handed is None and not s.halt.is_set() and self.backlog:
                    slot.handed = self.backlog.popleft()
                following = slot.handed
                if following is None and (s.halt.is_set() or (self.ending and not self.backlog)):
                    following = STOP
            try:
                end.send(Answer(mark if ask.mark is not None else None, following))
            except (EOFError, OSError):
                pass  # it died after asking: its end reads as closed on the next wait
            if ask.last:
                del self.slots[end]
                end.close()

    def _bury(self, end: Connection) -> None:
        """A worker process died: its message on the wire was recorded unknown (if the commit went
        through), the row it held and never marked goes back to the others."""
        s = self.s
        slot = self.slots.pop(end)
        if slot.in_flight is not None:
            s._done(DeliveryStatus.UNKNOWN if self.failure is None else None)
        if slot.handed is not None:
            self.backlog.appendleft(slot.handed)
        if not self.slots and not s.halt.is_set():
            s._stop_with(NewsletterError("every sender process died; nothing more can be sent"))

    def _nothing_claimed(self) -> None:
        """No row could be claimed: wait for what is out there, then for deferred rows to come
        due, or end."""
        s, o = self.s, self.s.options
        with s.lock:
            idle = s.busy == 0
        if not idle:
            self.claim_after = time.monotonic() + 0.01
            return
        due = s.store.next_deferred_at(s.issue_id)
        if due is None or not o.wait_for_retries:
            self.ending = True
            return
        pause = min(1.0, max(0.0, (due - s.now()).total_seconds()))
        if self.waited + pause > o.max_wait_seconds:
            self.ending = True
            return
        self.claim_after = time.monotonic() + (pause if pause > 0 else 0.05)
        self.waited += pause


def _constant(value: str) -> Callable[[int], str]:
    return lambda _subscriber_id: value


def send_issue(
    store: DeliveryStore,
    connect: Callable[[], Transport],
    template: MessageTemplate,
    tokens: Tokens,
    *,
    issue_id: int,
    mail_from: str | Callable[[int], str],
    options: SendOptions = SendOptions(),  # noqa: B008 - frozen
    resend_unknown: bool = False,
    now: Callable[[], datetime] = _utcnow,
    sleep: Callable[[float], None] = time.sleep,
    on_result: Callable[[DeliveryStatus], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SendReport:
    """Send an issue to every active subscriber who has not had it, over `options.connections`
    transports made by `connect`. Re-running it resumes; it never sends a row twice.
    `mail_from` is the envelope sender, or a function of the subscriber id that makes it (VERP)."""
    sender = _Send(
        store,
        connect,
        template,
        tokens,
        issue_id=issue_id,
        mail_from=mail_from if callable(mail_from) else _constant(mail_from),
        options=options,
        now=now,
        sleep=sleep,
        on_result=on_result,
        should_stop=should_stop,
    )
    return sender.run(resend_unknown=resend_unknown)

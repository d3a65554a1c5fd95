"""The send loop: claim rows, mark each in flight, hand it to a connection, record its fate.

Progress is the rows' states, never a "last id sent" counter. A row is claimed in batches (a
lease: it stays `pending`), marked `sending` in a committed transaction just before its message
goes on the wire, and recorded when the reply comes. Recording is cheap because one thread
commits for every connection at once: "message k's reply, and message k+1 in flight" for all
of them is one transaction (the group commit, `Ledger.commit`). So a sender killed at any instant
leaves at most one `sending` row per connection, which the next sender reports as `unknown`;
every other row is sent exactly once.

Two drivers run the same send step and claim loop (`step`): connection threads of this process,
fed by a queue and recorded by the ledger thread (`committer`); or, with `processes` > 1, worker
processes (`workers`) answered by one owner thread (`owner`). Threads, not asyncio: the
connections spend their time in socket calls and the ledger in the database driver, both of which
release the GIL; `make bench` shows where that stops scaling."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from ..db.models import DeliveryStatus
from ..errors import SendBusyError
from .committer import GroupCommitter, Request
from .compose import MessageTemplate
from .owner import Owner
from .pacing import RateLimiter, backoff_seconds
from .progress import Outcome, Progress, SendOptions, SendReport
from .records import DeliveryStore, DeliveryTarget, Enrolment, Ledger, MarkResult
from .replies import SendResult
from .step import ClaimLoop, SenderJob, send_over
from .tokens import Tokens
from .transport import Transport
from .workers import WorkerPool, split_slots

__all__ = [
    "DeliveryStore",
    "Ledger",
    "RateLimiter",
    "SendOptions",
    "SendReport",
    "backoff_seconds",
    "process_alive",
    "send_issue",
]

_DONE = object()  # on the work queue: a connection thread ends
CLAIM_POLL_SECONDS = 0.005  # how often the claim loop looks again when no claim is due


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


class _ThreadDesk:
    """A connection thread's desk: rows from the claim loop's queue; marks and records through the
    ledger thread. A fate waits to go with the connection's next mark, or goes alone when the
    queue is empty rather than wait while idle."""

    def __init__(self, progress: Progress, work: queue.Queue[object], ledger: GroupCommitter) -> None:
        self.p, self.work, self.ledger = progress, work, ledger
        self.pending: Outcome | None = None

    def next(self) -> DeliveryTarget | None:
        while True:
            try:
                item = self.work.get_nowait()
            except queue.Empty:
                self.flush()
                item = self.work.get()
            if item is _DONE:
                return None
            assert isinstance(item, DeliveryTarget)
            if not self.p.halt.is_set():
                return item
            self.p.done(None)  # stopping: not handed to the wire; deregistering releases it

    def mark(self, target: DeliveryTarget) -> bool:
        self.p.limiter.acquire()
        request = self.ledger.submit(Request(record=self.pending, mark=target))
        self._recorded()
        if request.error is not None:
            self.p.done(None)
            raise request.error
        if request.mark_result is MarkResult.IN_FLIGHT:
            return True
        self.p.done(DeliveryStatus.SKIPPED if request.mark_result is MarkResult.SKIPPED else None)
        return False

    def sent(self, target: DeliveryTarget, result: SendResult) -> None:
        self.pending = self.p.outcome(target, result)

    def unsent(self, target: DeliveryTarget, why: str) -> None:
        self.ledger.submit(Request(unmark=(target, why)))
        self.p.done(None)

    def flush(self) -> None:
        """The pending fate, recorded now."""
        if self.pending is not None:
            request = self.ledger.submit(Request(record=self.pending))
            self._recorded()
            if request.error is not None:
                self.p.stop_with(request.error)

    def _recorded(self) -> None:
        if self.pending is not None:
            self.p.done(self.pending.status)
            self.pending = None


class _Send:
    """One run of `send_issue`: this process's sender row, its connections (threads, or worker
    processes answered by an `Owner`), and what it reports."""

    def __init__(
        self,
        store: DeliveryStore,
        job: SenderJob,
        *,
        options: SendOptions,
        now: Callable[[], datetime],
        sleep: Callable[[float], None],
        on_result: Callable[[DeliveryStatus], None] | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.store, self.job, self.options = store, job, options
        self.issue_id, self.now, self.sleep, self.should_stop = job.issue_id, now, sleep, should_stop
        self.id = str(uuid.uuid4())
        self.progress = Progress(job.issue_id, options, now=now, on_result=on_result)
        self.claims = ClaimLoop(store, self.progress, should_stop=should_stop)

    def run(self, *, resend_unknown: bool) -> SendReport:
        started = time.monotonic()
        self.claims.refuse_if_paused()
        self._register()
        report = self.progress.report
        pool: WorkerPool | None = None
        try:
            if resend_unknown:
                report.requeued = self.store.requeue_unknown(self.issue_id)
            report.added = self.store.start_send(self.issue_id)
            if self.options.processes > 1:  # forked before any thread of this send exists
                slots = split_slots(self.options.connections, self.options.processes)
                pool = WorkerPool(self.job, slots_per_worker=slots)
        except BaseException:
            self.store.deregister_sender(self.id)
            raise
        failure = self._run_owner(pool) if pool is not None else self._run_threads()
        if self.progress.fatal is not None:
            raise self.progress.fatal
        if failure is not None:
            raise failure
        report.finished = self.store.finish_issue_if_done(self.issue_id, now=self.now())
        report.seconds = time.monotonic() - started
        return report

    def _register(self) -> None:
        waited = 0.0
        while True:
            try:
                self.progress.report.unknown_found = self.store.register_sender(
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
            except SendBusyError:  # another sender holds it; a database failure is no reason to wait
                if (
                    not self.options.wait_for_sender
                    or self.should_stop()
                    or waited > self.options.max_wait_seconds
                ):
                    raise
                self.sleep(1.0)
                waited += 1.0

    def _end(self, leftovers: list[int]) -> None:
        self.store.release(self.issue_id, self.id, leftovers)
        self.store.deregister_sender(self.id)

    # -- worker processes: one thread here owns the ledger and answers every connection ----------

    def _run_owner(self, pool: WorkerPool) -> BaseException | None:
        ledger = self.store.ledger(self.issue_id, self.id)
        owner = Owner(self.progress, self.claims, ledger, pool.owner_ends)
        try:
            owner.run()
        finally:
            self.progress.halt.set()
            pool.join(timeout=30)
            ledger.close()
            self._end(owner.leftovers())
        return owner.failure

    # -- connection threads, fed by the claim loop, recorded by the ledger thread ---------------

    def _run_threads(self) -> BaseException | None:
        ledger = GroupCommitter(
            self.store.ledger(self.issue_id, self.id),
            heartbeat_seconds=self.options.heartbeat_seconds,
            now=self.now,
        )
        ledger.start()
        work: queue.Queue[object] = queue.Queue()
        desks = [_ThreadDesk(self.progress, work, ledger) for _ in range(self.options.connections)]
        connections = [
            threading.Thread(target=self._connection, args=(desk,), name=f"smtp-{i}", daemon=True)
            for i, desk in enumerate(desks)
        ]
        try:
            for c in connections:
                c.start()
            self._claim_loop(ledger, work)
        finally:
            self.progress.halt.set()
            leftovers = _drain(work)
            for _ in connections:
                work.put(_DONE)
            for c in connections:
                if c.is_alive():
                    c.join()
            ledger.stop()
            ledger.ledger.close()
            self._end(leftovers)
        return ledger.failure

    def _claim_loop(self, ledger: GroupCommitter, work: queue.Queue[object]) -> None:
        claims = self.claims
        while not claims.halts() and not claims.ending:
            many = claims.wanted(work.qsize())
            if not many:
                self.sleep(CLAIM_POLL_SECONDS)
                continue
            rows = ledger.claim(many, self.options.lease)
            self.progress.claimed(len(rows))
            for target in rows:
                work.put(target)
            claims.got(len(rows))

    def _connection(self, desk: _ThreadDesk) -> None:
        try:
            send_over(desk, self.job, sleep=self.sleep)
        except BaseException as exc:  # never die silently: the claim loop would wait for ever
            self.progress.stop_with(exc)
        finally:
            desk.flush()


def _drain(work: queue.Queue[object]) -> list[int]:
    """Rows claimed but never handed to a connection: to be given back."""
    left: list[int] = []
    while True:
        try:
            item = work.get_nowait()
        except queue.Empty:
            return left
        if isinstance(item, DeliveryTarget):
            left.append(item.subscriber_id)


def _constant(value: str) -> Callable[[int], str]:
    return lambda _subscriber_id: value


def send_issue(
    store: DeliveryStore,
    connect: Callable[[], Transport],
    template: MessageTemplate,
    tokens: Tokens,
    *,
    issue_id: int,
    variants: Mapping[int, MessageTemplate] | None = None,
    mail_from: str | Callable[[int], str],
    options: SendOptions = SendOptions(),  # noqa: B008 - frozen
    resend_unknown: bool = False,
    now: Callable[[], datetime] = _utcnow,
    sleep: Callable[[float], None] = time.sleep,
    on_result: Callable[[DeliveryStatus], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SendReport:
    """Send an issue to every active subscriber who has not had it, over `options.connections`
    transports made by `connect`. Re-running it resumes; it never sends a row twice; a paused
    issue is refused. `mail_from` is the envelope sender, or a function of the subscriber id that
    makes it (VERP). `variants`: the renderings for readers of some sections (SPEC 8), by id; the
    audience names each reader's (delivery.sending fixes it before it calls this)."""
    job = SenderJob(
        connect,
        template,
        tokens,
        mail_from if callable(mail_from) else _constant(mail_from),
        issue_id,
        reconnect_seconds=options.reconnect_seconds,
        variants=variants or {},
    )
    sender = _Send(
        store,
        job,
        options=options,
        now=now,
        sleep=sleep,
        on_result=on_result,
        should_stop=should_stop,
    )
    return sender.run(resend_unknown=resend_unknown)

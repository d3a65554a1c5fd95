"""Sender processes: `[delivery] processes` workers compose, DKIM-sign and speak SMTP in parallel,
each over its share of `[smtp] connections`, while the sending process (the owner) keeps the
ledger: the claims, the in-flight marks, the records and the group commits, exactly as it does
for its own threads. One Python process is capped by its GIL and by one RSA signature per message;
several are not.

Each connection slot is a pipe between a thread of a worker and a thread of the owner. Over it
goes one round trip per message: "here is the fate of my last message; may this one go on the
wire; and what is next?" The owner answers only after the ledger committed the mark, so a message
is never on the wire unless its row says `sending`, whatever process dies when:

- a worker killed: its owner thread sees the pipe close; the message it had in flight is
  recorded `unknown` (it may have been delivered), the one handed to it and not yet marked goes
  back to the others;
- the owner killed: every worker sees its pipes close and stops at once; what was in flight is
  `sending`, which the next sender reports as `unknown`, like any crash.

The workers are forked before any thread of the send starts (they inherit the composed issue,
the signer and the transport settings; they never touch the database), ignore SIGINT and
SIGTERM (the owner stops them, after recording what is in flight), and leave with os._exit."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..errors import NewsletterError
from .records import DeliveryTarget, MarkResult
from .replies import SendResult
from .step import SenderJob, send_over

__all__ = ["Ask", "Answer", "STOP", "WorkerPool", "split_slots"]

STOP = "stop"  # the owner's answer when a slot has nothing more to do
IDLE_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class Ask:
    """A worker slot's one message per round trip."""

    previous: tuple[DeliveryTarget, SendResult] | None = None  # the last message's fate
    mark: DeliveryTarget | None = None  # may this one go on the wire?
    unmark: tuple[DeliveryTarget, str] | None = None  # no session: this one never left
    fatal: NewsletterError | None = None  # this slot cannot go on, and why (the relay, a bug)
    last: bool = False  # nothing more will come from this slot


@dataclass(frozen=True)
class Answer:
    mark: MarkResult | None  # IN_FLIGHT: send it; anything else: don't
    next: DeliveryTarget | str | None  # the next row, STOP, or None (nothing yet: ask again)


def split_slots(connections: int, processes: int) -> list[int]:
    """How many connections each worker gets: as even as it goes, every worker at least one."""
    processes = max(1, min(processes, connections))
    return [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]


class WorkerPool:
    """The worker processes of one send, and the owner's end of every slot's pipe."""

    def __init__(self, job: SenderJob, *, slots_per_worker: list[int]) -> None:
        ctx = multiprocessing.get_context("fork")
        pipes = [[ctx.Pipe() for _ in range(n)] for n in slots_per_worker]
        self.owner_ends: list[Connection] = [own for group in pipes for own, _ in group]
        self.processes: list[Any] = []
        for k, group in enumerate(pipes):
            mine = [theirs for _, theirs in group]
            others = [c for j, g in enumerate(pipes) if j != k for _, c in g] + self.owner_ends
            process = ctx.Process(
                target=_worker_main,
                args=(mine, others, job),
                name=f"newsletter-sender-{k}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)
            for theirs in mine:  # the owner keeps only its own ends, so a dead worker reads as EOF
                theirs.close()

    def join(self, timeout: float) -> None:
        """Closes the owner's ends first, so a worker still waiting for an answer (the owner failed)
        stops at once, then waits for every worker."""
        for end in self.owner_ends:
            end.close()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1)


def _worker_main(mine: list[Connection], others: list[Connection], job: SenderJob) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner stops us, with what is in flight recorded
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for end in others:
        end.close()
    # not the owner's standard streams: whoever reads them waits for the owner alone
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    threads = [threading.Thread(target=_slot, args=(conn, job), daemon=True) for conn in mine]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os._exit(0)  # no finalizers: the database connections inherited from the owner are not ours


class _OwnerGone(Exception):
    """The owner's end of the pipe closed: it died, or gave the send up."""


class _PipeDesk:
    """A worker slot's desk: each question is one round trip to the owner, and each answer names
    the slot's next row (or STOP, or None: nothing yet). A message's fate rides on the slot's next
    question."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.following: DeliveryTarget | str | None = None
        self.asked = False
        self.pending: tuple[DeliveryTarget, SendResult] | None = None

    def _ask(self, message: Ask) -> Answer:
        try:
            self.conn.send(message)
            answer: Answer = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _OwnerGone from exc
        self.asked, self.following = True, answer.next
        return answer

    def _previous(self) -> tuple[DeliveryTarget, SendResult] | None:
        previous, self.pending = self.pending, None
        return previous

    def next(self) -> DeliveryTarget | None:
        while True:
            item, self.following = self.following, None
            if isinstance(item, DeliveryTarget):
                return item
            if item == STOP:
                return None
            if self.asked:  # nothing yet: record what is done, then ask again
                time.sleep(0 if self.pending else IDLE_POLL_SECONDS)
            self._ask(Ask(previous=self._previous()))

    def mark(self, target: DeliveryTarget) -> bool:
        return self._ask(Ask(previous=self._previous(), mark=target)).mark is MarkResult.IN_FLIGHT

    def sent(self, target: DeliveryTarget, result: SendResult) -> None:
        self.pending = (target, result)

    def unsent(self, target: DeliveryTarget, why: str) -> None:
        self._ask(Ask(unmark=(target, why)))

    def last(self, failure: BaseException | None = None) -> None:
        """This slot is done: the last fate, and why it cannot go on if it cannot."""
        self._ask(Ask(previous=self._previous(), fatal=_portable(failure) if failure else None, last=True))


def _portable(exc: BaseException) -> NewsletterError:
    """A failure as the owner can read it through the pipe: ours as it is, anything else named."""
    if isinstance(exc, NewsletterError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # noqa: BLE001 - an error class that cannot cross: its words can
            return NewsletterError(str(exc))
    return NewsletterError(f"a sender process failed: {type(exc).__name__}: {exc}")


def _slot(conn: Connection, job: SenderJob) -> None:
    """One SMTP connection, driven by the owner's answers. Any trouble with the owner (its pipe
    closed: it died) stops the slot at once, sending nothing more."""
    desk = _PipeDesk(conn)
    try:
        send_over(desk, job)
        desk.last()
    except _OwnerGone:
        return  # whatever was in flight stays `sending` (unknown)
    except BaseException as exc:  # the owner stops the send with it
        try:
            desk.last(exc)
        except _OwnerGone:
            pass

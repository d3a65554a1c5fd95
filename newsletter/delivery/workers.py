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
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..errors import TransportError
from .compose import MessageTemplate, Recipient
from .records import DeliveryTarget, MarkResult
from .tokens import Tokens
from .transport import Envelope, SendResult, Transport

__all__ = ["Ask", "Answer", "STOP", "SenderJob", "WorkerPool", "reconnect_wait", "split_slots"]

STOP = "stop"  # the owner's answer when a slot has nothing more to do
IDLE_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class Ask:
    """A worker slot's one message per round trip."""

    previous: tuple[DeliveryTarget, SendResult] | None = None  # the last message's fate
    mark: DeliveryTarget | None = None  # may this one go on the wire?
    unmark: tuple[DeliveryTarget, str] | None = None  # no session: this one never left
    fatal: str | None = None  # this slot cannot go on (no SMTP session, a bug)
    last: bool = False  # nothing more will come from this slot


@dataclass(frozen=True)
class SenderJob:
    """What a worker needs to turn a row into a message on the wire (inherited at the fork)."""

    connect: Callable[[], Transport]
    template: MessageTemplate
    tokens: Tokens
    mail_from: Callable[[int], str]
    issue_id: int
    reconnect_seconds: float = 2.0


@dataclass(frozen=True)
class Answer:
    mark: MarkResult | None  # IN_FLIGHT: send it; anything else: don't
    next: DeliveryTarget | str | None  # the next row, STOP, or None (nothing yet: ask again)


def reconnect_wait(base: float, failures: int) -> float:
    """The wait after the n-th failure in a row to open an SMTP session: doubled each time."""
    return float(min(30.0, base * 2 ** (failures - 1)))


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
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1)
        for end in self.owner_ends:
            end.close()


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


def _slot(conn: Connection, job: SenderJob) -> None:
    """One SMTP connection, driven by the owner's answers. Any trouble with the owner (its pipe
    closed: it died) stops the slot at once, sending nothing more."""

    def ask(message: Ask) -> Answer:
        conn.send(message)
        answer: Answer = conn.recv()
        return answer

    transport: Transport | None = None
    try:
        transport = job.connect()
        item = ask(Ask()).next
        previous: tuple[DeliveryTarget, SendResult] | None = None
        failures = 0
        while True:
            if item == STOP:
                ask(Ask(previous=previous, last=True))
                return
            if item is None:  # nothing yet: record what is done, then ask again
                time.sleep(0 if previous else IDLE_POLL_SECONDS)
                item = ask(Ask(previous=previous)).next
                previous = None
                continue
            assert isinstance(item, DeliveryTarget)
            target = item
            who = target.subscriber_id
            token = job.tokens.unsubscribe(who)
            message = job.template.compose(Recipient(who, target.email, target.name, token))
            answer = ask(Ask(previous=previous, mark=target))
            previous, item = None, answer.next
            if answer.mark is not MarkResult.IN_FLIGHT:
                continue
            envelope = Envelope(job.mail_from(who), target.email, f"issue-{job.issue_id}/{who:08d}")
            try:
                previous = (target, transport.send(envelope, message))
                failures = 0
            except TransportError as exc:  # no session: nothing was sent
                failures += 1
                fatal = str(exc) if failures >= 3 else None
                item = ask(Ask(unmark=(target, f"not sent: {exc}"), fatal=fatal)).next
                if fatal:
                    ask(Ask(last=True))
                    return
                time.sleep(reconnect_wait(job.reconnect_seconds, failures))
    except (EOFError, OSError):
        return  # the owner is gone: stop, whatever was in flight stays `sending` (unknown)
    except BaseException as exc:  # a bug here: the owner stops the send with it
        try:
            ask(Ask(fatal=f"{type(exc).__name__}: {exc}", last=True))
        except (EOFError, OSError):
            pass
    finally:
        if transport is not None:
            transport.close()

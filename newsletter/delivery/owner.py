"""The owner of a send's worker processes: one thread of the sending process that keeps the ledger
for every worker connection. It waits for the connections that have asked something, then claims,
records, marks and beats the heartbeat in one transaction for all of them (the group commit), and
only then answers each. No thread hand-offs per message: its time goes to the database and the
pipes."""

from __future__ import annotations

import collections
import multiprocessing.connection
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import NamedTuple

from ..db.models import DeliveryStatus
from ..errors import NewsletterError
from .committer import database_failure
from .progress import Outcome, Progress
from .records import DeliveryTarget, Fate, Group, Ledger, MarkResult
from .step import ClaimLoop
from .workers import STOP, Answer, Ask

__all__ = ["Owner"]


@dataclass
class _Slot:
    in_flight: DeliveryTarget | None = None  # marked for it, its fate not yet heard
    handed: DeliveryTarget | None = None  # given to it, not yet asked to be marked


class _Committed(NamedTuple):
    marks: list[MarkResult | None]  # for each ask, in order
    outcomes: list[Outcome | None]  # for each ask, in order
    claimed: list[DeliveryTarget]


class Owner:
    """Answers every worker connection of one send (`ends`: the owner's end of each slot's pipe)."""

    IDLE_WAIT = 0.01

    def __init__(self, progress: Progress, claims: ClaimLoop, ledger: Ledger, ends: list[Connection]) -> None:
        self.p, self.claims, self.ledger = progress, claims, ledger
        self.slots: dict[Connection, _Slot] = {end: _Slot() for end in ends}
        self.backlog: collections.deque[DeliveryTarget] = collections.deque()
        self.failure: BaseException | None = None

    def leftovers(self) -> list[int]:
        """The rows claimed and never marked: to be released."""
        held = [slot.handed for slot in self.slots.values() if slot.handed is not None]
        return [t.subscriber_id for t in [*self.backlog, *held]]

    def run(self) -> None:
        p = self.p
        last_beat = time.monotonic()
        while self.slots:
            self.claims.halts()
            asks: list[tuple[Connection, Ask]] = []
            dead: list[Connection] = []
            for end in multiprocessing.connection.wait(list(self.slots), timeout=self.IDLE_WAIT):
                assert isinstance(end, Connection)
                try:
                    asks.append((end, end.recv()))
                except (EOFError, OSError):  # a worker process died
                    dead.append(end)
            claim = self.claims.wanted(len(self.backlog))
            beat = time.monotonic() - last_beat >= p.options.heartbeat_seconds
            marks = [ask.mark for _, ask in asks if ask.mark is not None and not p.halt.is_set()]
            for _ in marks:  # paced before the transaction: no lock is held while waiting
                p.limiter.acquire()
            committed = self._commit(asks, dead, claim=claim, beat=beat)
            if beat:
                last_beat = time.monotonic()
            self._answer(asks, committed)
            for end in dead:
                self._bury(end)
            if claim and committed is not None:
                self.claims.got(len(committed.claimed))

    def _commit(
        self, asks: list[tuple[Connection, Ask]], dead: list[Connection], *, claim: int, beat: bool
    ) -> _Committed | None:
        """One transaction for everything asked; None if it failed (nothing committed)."""
        p = self.p
        if not (asks or dead or claim or beat) or self.failure is not None:
            return _Committed([None] * len(asks), [None] * len(asks), [])
        outcomes = [p.outcome(*ask.previous) if ask.previous is not None else None for _, ask in asks]
        fates = [o.fate for o in outcomes if o is not None]
        for end in dead:
            lost = self.slots[end].in_flight
            if lost is not None:  # on the wire when its process died: it may have arrived
                why = "in flight when its sender process died"
                fates.append(Fate(lost.subscriber_id, DeliveryStatus.UNKNOWN, why, lost.attempts + 1, None))
        marking = not p.halt.is_set()
        try:
            result = self.ledger.commit(
                Group(
                    p.now(),
                    fates=fates,
                    unmarks=[
                        (a.unmark[0].subscriber_id, a.unmark[1]) for _, a in asks if a.unmark is not None
                    ],
                    marks=[a.mark.subscriber_id for _, a in asks if a.mark is not None and marking],
                    claim=claim,
                    lease=p.options.lease,
                    beat=beat,
                )
            )
        except Exception as exc:  # the database failed, or this sender was fenced off
            self.failure = database_failure(exc)
            p.halt.set()
            return None
        marks = [
            result.marks[a.mark.subscriber_id] if a.mark is not None and marking else None for _, a in asks
        ]
        p.claimed(len(result.claimed))
        self.backlog.extend(result.claimed)
        return _Committed(marks, outcomes, result.claimed)

    def _answer(self, asks: list[tuple[Connection, Ask]], committed: _Committed | None) -> None:
        p = self.p
        for i, (end, ask) in enumerate(asks):
            slot = self.slots[end]
            mark = outcome = None
            if committed is not None:
                mark, outcome = committed.marks[i], committed.outcomes[i]
                if outcome is not None:
                    slot.in_flight = None
                    p.done(outcome.status)
                if ask.unmark is not None:
                    p.done(None)
            if ask.mark is not None:
                slot.handed = None
                if mark is MarkResult.IN_FLIGHT:
                    slot.in_flight = ask.mark
                else:  # skipped, lost to another sender, or not marked at all (stopping)
                    p.done(DeliveryStatus.SKIPPED if mark is MarkResult.SKIPPED else None)
            if ask.fatal is not None:
                p.stop_with(ask.fatal)
            following: DeliveryTarget | str | None
            if ask.last:
                if slot.handed is not None:  # never marked: for the other slots
                    self.backlog.appendleft(slot.handed)
                    slot.handed = None
                following = STOP
            else:
                if slot.handed is None and not p.halt.is_set() and self.backlog:
                    slot.handed = self.backlog.popleft()
                following = slot.handed
                if following is None and (p.halt.is_set() or (self.claims.ending and not self.backlog)):
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
        p = self.p
        slot = self.slots.pop(end)
        if slot.in_flight is not None:
            p.done(DeliveryStatus.UNKNOWN if self.failure is None else None)
        if slot.handed is not None:
            self.backlog.appendleft(slot.handed)
        if not self.slots and not p.halt.is_set():
            p.stop_with(NewsletterError("every sender process died; nothing more can be sent"))

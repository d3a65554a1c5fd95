"""The ledger thread of a send whose connections are threads: it commits what the connections and
the claim loop ask in groups, one transaction for every request waiting (`Ledger.commit`), and
beats the sender's heartbeat when nothing is asked."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..errors import NewsletterError
from .progress import Outcome
from .records import DeliveryTarget, Group, Ledger, MarkResult

__all__ = ["GroupCommitter", "Request", "database_failure"]


def database_failure(exc: BaseException) -> BaseException:
    """What a failed group commit is reported as: the database's failure, unless it already says
    what failed (this sender fenced off, or an error of ours)."""
    if isinstance(exc, NewsletterError):
        return exc
    return NewsletterError(f"the database failed while recording the send: {exc}")


@dataclass
class Request:
    record: Outcome | None = None
    mark: DeliveryTarget | None = None
    unmark: tuple[DeliveryTarget, str] | None = None
    claim: tuple[int, timedelta] | None = None  # (how many, lease)
    claimed: list[DeliveryTarget] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    mark_result: MarkResult | None = None
    error: BaseException | None = None


class GroupCommitter(threading.Thread):
    """Commits the connections' requests in groups: one transaction for all that are waiting."""

    def __init__(self, ledger: Ledger, *, heartbeat_seconds: float, now: Callable[[], datetime]) -> None:
        super().__init__(name="ledger", daemon=True)
        self.ledger, self.heartbeat_seconds, self.now = ledger, heartbeat_seconds, now
        self.requests: queue.Queue[Request | None] = queue.Queue()
        self.failure: BaseException | None = None

    def submit(self, request: Request) -> Request:
        if self.failure is not None:
            request.error = self.failure
            return request
        self.requests.put(request)
        while not request.done.wait(0.5):
            if not self.is_alive():  # it stopped before reaching this request
                request.error = self.failure or NewsletterError("the send stopped")
                break
        return request

    def claim(self, many: int, lease: timedelta) -> list[DeliveryTarget]:
        """Up to `many` rows for this sender, held for `lease`; raises what failed."""
        request = self.submit(Request(claim=(many, lease)))
        if request.error is not None:
            raise request.error
        return request.claimed

    def run(self) -> None:
        last_beat = time.monotonic()
        while True:
            try:
                first = self.requests.get(timeout=self.heartbeat_seconds)
            except queue.Empty:
                first = Request()  # nothing to record: a heartbeat alone
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
            except BaseException as exc:  # every waiter learns it
                self.failure = database_failure(exc)
                for r in work:
                    r.error = self.failure
            for r in work:
                r.done.set()
            if time.monotonic() - last_beat >= self.heartbeat_seconds:
                last_beat = time.monotonic()
            if stopping or self.failure is not None:
                self._fail_waiting()
                return

    def _commit(self, work: list[Request], *, beat: bool) -> None:
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

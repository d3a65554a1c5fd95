"""The send's pace: one token bucket shared by every connection, slowed by a throttling reply;
the backoff before a deferred row's next attempt; the wait before a connection tries another
session."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .progress import SendOptions

__all__ = ["RateLimiter", "backoff_seconds", "reconnect_wait"]


def backoff_seconds(
    attempts: int, options: SendOptions, *, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: base, 2x base, 4x base ... each within +-20 %."""
    raw = options.retry_base_seconds * 2.0 ** max(0, attempts - 1)
    return min(options.retry_max_seconds, raw) * (0.8 + 0.4 * rng())


def reconnect_wait(base: float, failures: int) -> float:
    """The wait after the n-th failure in a row to open an SMTP session: doubled each time."""
    return float(min(30.0, base * 2 ** (failures - 1)))


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

"""A sliding-window counter per key (a client address, an operator's name), kept in memory by the
serving process."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["SlidingWindow", "LOGIN_FAILURES", "LOGIN_WINDOW_SECONDS", "login_window"]

LOGIN_FAILURES = 10  # failed logins from one address, or for one name ...
LOGIN_WINDOW_SECONDS = 15 * 60  # ... within this many seconds lock that address or name out (429)


class SlidingWindow:
    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> float | None:
        """Count one hit; None if allowed, else the seconds until the next one would be."""
        return self.take([key], now)

    def take(self, keys: list[str], now: float) -> float | None:
        """Count one hit on every key at once if each has room; else count none and return the
        seconds until all would have. Checked and counted under one lock, so parallel tries cannot
        slip past the limit between a check and a count."""
        with self._lock:
            waits = []
            for key in keys:
                hits = self._hits.get(key)
                while hits and hits[0] <= now - self.seconds:
                    hits.popleft()
                if hits and len(hits) >= self.limit:
                    waits.append(hits[0] + self.seconds - now)
            if waits:
                return max(waits)
            for key in keys:
                self._hits.setdefault(key, deque()).append(now)
            if len(self._hits) > 100_000:  # forget idle keys rather than grow without bound
                for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.seconds]:
                    del self._hits[k]
            return None

    def forgive(self, keys: list[str], now: float) -> None:
        """Take back the hits that `take(keys, now)` counted (the try turned out well)."""
        with self._lock:
            for key in keys:
                hits = self._hits.get(key)
                if hits and now in hits:
                    hits.remove(now)


def login_window() -> SlidingWindow:
    return SlidingWindow(LOGIN_FAILURES, LOGIN_WINDOW_SECONDS)

"""A sliding-window counter per key (client address), kept in memory by the serving process."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["SlidingWindow", "LOGIN_FAILURES", "LOGIN_WINDOW_SECONDS", "login_window"]

LOGIN_FAILURES = 10  # failed logins from one address ...
LOGIN_WINDOW_SECONDS = 15 * 60  # ... within this many seconds lock that address out (429)


class SlidingWindow:
    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def peek(self, key: str, now: float) -> float | None:
        """Like `hit`, without counting: None if one more would be allowed."""
        with self._lock:
            hits = self._hits.get(key)
            while hits and hits[0] <= now - self.seconds:
                hits.popleft()
            if hits and len(hits) >= self.limit:
                return hits[0] + self.seconds - now
            return None

    def hit(self, key: str, now: float) -> float | None:
        """Count one hit; None if allowed, else the seconds until the next one would be."""
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.seconds:
                hits.popleft()
            if len(hits) >= self.limit:
                return hits[0] + self.seconds - now
            hits.append(now)
            if len(self._hits) > 100_000:  # forget idle addresses rather than grow without bound
                for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.seconds]:
                    del self._hits[k]
            return None


def login_window() -> SlidingWindow:
    return SlidingWindow(LOGIN_FAILURES, LOGIN_WINDOW_SECONDS)

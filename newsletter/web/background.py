"""Sends the console starts (resume, resend unknown) run on threads of the server process. When
the server stops they stop as `send` does on SIGTERM: no more claims, what is in flight finishes
and is recorded, and the sender leaves; a later send or the scheduler goes on from there."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["BackgroundSends"]


class BackgroundSends:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[int, threading.Thread] = {}
        self.stopping = threading.Event()

    def running(self, issue_id: int) -> bool:
        with self._lock:
            return issue_id in self._threads

    def start(self, issue_id: int, work: Callable[[Callable[[], bool]], None]) -> bool:
        """Run `work(should_stop)` for an issue, unless one runs already or the server is stopping."""
        with self._lock:
            if issue_id in self._threads or self.stopping.is_set():
                return False

            def run() -> None:
                try:
                    work(self.stopping.is_set)
                finally:
                    with self._lock:
                        self._threads.pop(issue_id, None)

            thread = threading.Thread(target=run, name=f"console-send-{issue_id}", daemon=True)
            self._threads[issue_id] = thread
        thread.start()
        return True

    def stop(self, *, timeout: float) -> list[int]:
        """Tell every send to stop, and wait for each to record what it has in flight."""
        self.stopping.set()
        with self._lock:
            running = dict(self._threads)
        for thread in running.values():
            thread.join(timeout)
        return sorted(running)

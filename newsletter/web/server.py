"""`newsletter serve`'s server: waitress, with the limits it holds before the app sees a request.

A body over its route's limit (`body_limit`) is answered 413 as soon as the request's head says
how long it is, before a byte of it is read; a request must arrive whole in time (its head within
`head_seconds`, then its body at `body_rate` at least, an operator's import at `import_rate`),
else it is answered 408 and its connection closed. Waitress itself has no such deadline: its
channel_timeout counts only silence, which a peer that sends a header line every few seconds never
gives it. A connection serves for `connection_seconds` or `connection_requests` requests,
whichever ends first, and one address holds at most `per_address` connections (the trusted
proxies' are not counted), so no peer keeps a connection, or all of them, for ever."""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import waitress
from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.task import WSGITask
from waitress.utilities import Error, RequestEntityTooLarge
from werkzeug.http import parse_cookie

from . import IMPORT_BODY_LIMIT, body_limit
from .proxies import ProxyAddresses

__all__ = ["Limits", "create_server", "most_connections"]

HEAD_BYTES = 32 * 1024  # the request line and headers together (nginx takes 4 x 8 KB by default)
MOST_CONNECTIONS = 1000
THREADS = 8

log = logging.getLogger("newsletter.serve")


@dataclass(frozen=True)
class Limits:
    head_seconds: float = 10  # a request line and headers arrive within this; an idle connection closes
    body_rate: int = 64 * 1024  # bytes a second, then: a form's body in one second more
    import_rate: int = 16 * 1024  # an operator's CSV import, from a slow uplink (50 MB in 53 minutes)
    connection_seconds: float = 60  # a request begun later is not taken; an answer after says "close"
    connection_requests: int = 100
    per_address: int = 50


class RequestTimeout(Error):  # type: ignore[misc]  # waitress is untyped
    code = 408
    reason = "Request Timeout"


BodyLimit = Callable[[str, Mapping[str, str]], int]


def create_server(app: Flask, host: str, port: int, limits: Limits = Limits()) -> Any:
    """A waitress server for `app` on host:port, not yet running (`.run()`)."""
    channels: dict[int, Any] = {}
    server = waitress.create_server(
        app,
        map=channels,
        host=host,
        port=port,
        threads=THREADS,
        ident="newsletter",
        connection_limit=most_connections(),
        channel_timeout=limits.head_seconds,  # silence before or between requests
        cleanup_interval=1,
        max_request_header_size=HEAD_BYTES,
        max_request_body_size=IMPORT_BODY_LIMIT + 1,  # waitress refuses a length equal to it
        asyncore_use_poll=True,  # select() fails on a descriptor numbered 1024 or more
    )
    proxies = ProxyAddresses(app.extensions["newsletter"].settings.web.trusted_proxies)
    connection = _connection_class(functools.partial(body_limit, app), proxies, limits)
    for dispatcher in list(channels.values()):  # one listener per address `host` names
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = connection
    return server


def most_connections() -> int:
    """Open connections at once: as many as the open-files limit leaves room for (a connection may
    hold its socket and a temporary file for a body), at most MOST_CONNECTIONS."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(16, min(MOST_CONNECTIONS, (soft - 64) // 2))


def _connection_class(limit: BodyLimit, proxies: ProxyAddresses, limits: Limits) -> type[HTTPChannel]:
    open_from: Counter[str] = Counter()  # connections by peer address, the trusted proxies' not counted
    refusing: set[str] = set()  # addresses at the cap, told in the log

    class Request(HTTPRequestParser):  # type: ignore[misc]  # waitress is untyped
        error: Any  # waitress's: the answer to give instead of the app's

        def __init__(self, adj: Any) -> None:
            super().__init__(adj)
            self.began = time.monotonic()  # its first bytes arrived
            self.allowed: int | None = None

        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            if self.headers_finished and not self.empty and self.error is None:  # empty: bare CRLFs
                if self.allowed is None:
                    self.allowed = limit(self.path, parse_cookie(self.headers.get("COOKIE", "")))
                length = len(self.body_rcv) if self.chunked and self.body_rcv else self.content_length
                if length > self.allowed:
                    self.error = RequestEntityTooLarge(f"this route takes {self.allowed} bytes at most")
                    self.completed = True
            if self.error is not None:
                self.expect_continue = False  # else waitress sends "100 Continue" and reads the body
            return consumed

        def deadline(self) -> float:
            body = 0 if not self.headers_finished else self.allowed if self.chunked else self.content_length
            rate = limits.import_rate if self.allowed == IMPORT_BODY_LIMIT else limits.body_rate
            return self.began + limits.head_seconds + (body or 0) / rate

    class Answer(WSGITask):  # type: ignore[misc]
        def build_response_header(self) -> bytes:
            channel = self.channel
            channel.served += 1
            if channel.served >= limits.connection_requests or time.monotonic() >= channel.ends:
                self.set_close_on_finish()  # "Connection: close", then closed
            header: bytes = super().build_response_header()
            return header

    class Connection(HTTPChannel):  # type: ignore[misc]
        parser_class = Request
        task_class = Answer

        def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
            super().__init__(server, sock, addr, adj, map)
            self.ends = time.monotonic() + limits.connection_seconds
            self.served = 0
            peer = str(addr[0]) if isinstance(addr, tuple) else ""  # "" on a Unix socket: not counted
            self.peer: str | None = None if not peer or proxies.trusts(peer) else peer
            if self.peer is None:
                return
            if open_from[self.peer] >= limits.per_address:
                if peer not in refusing:  # once until it has fewer open: a flood is one line
                    refusing.add(peer)
                    log.warning("refusing connections from %s: %d open already", peer, limits.per_address)
                self.peer = None
                self.will_close = True  # closed on the loop's next turn, unread
                return
            open_from[self.peer] += 1

        def del_channel(self, map: Any = None) -> None:
            super().del_channel(map)
            if self.peer is not None:  # once: close() may be called again
                open_from[self.peer] -= 1
                refusing.discard(self.peer)
                if not open_from[self.peer]:
                    del open_from[self.peer]
                self.peer = None

        def readable(self) -> bool:
            # called by the server's loop at least once a second, for every connection
            if not self.requests:
                now, request = time.monotonic(), self.request
                if request is None or request.began > self.ends:
                    if now > self.ends and not self.total_outbufs_len:
                        self.will_close = True  # its life is over, its answers sent, no request under way
                elif now > request.deadline():
                    self._time_out(request)
            ready: bool = super().readable()
            return ready

        def _time_out(self, request: Request) -> None:
            """Answer 408 (and close) instead of waiting for the rest of the request."""
            with self.requests_lock:
                request.error = RequestTimeout("the request did not arrive in time")
                request.completed, request.expect_continue = True, False
                self.request = None
                self.requests.append(request)
                self.server.add_task(self)

    return Connection

"""`newsletter serve`'s server: waitress, with the limits it holds before the app sees a request.

A body over its route's limit (`body_limit`) is answered 413 as soon as the request's head says
how long it is, before a byte of it is read; a request must arrive whole in time (its head within
HEAD_SECONDS, its body at BODY_BYTES_PER_SECOND at least), else its connection is closed. Waitress
itself has no such deadline: its channel_timeout counts only silence, which a peer that sends a
header line every few seconds never gives it."""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable, Mapping
from typing import Any

import waitress
from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.utilities import RequestEntityTooLarge
from werkzeug.http import parse_cookie

from . import IMPORT_BODY_LIMIT, body_limit

__all__ = ["create_server", "most_connections", "HEAD_SECONDS", "BODY_BYTES_PER_SECOND"]

HEAD_SECONDS = 10  # a request line and its headers arrive within this, and a connection idles no longer
BODY_BYTES_PER_SECOND = 64 * 1024  # then its body, at this rate at least: a form's in one second more
HEAD_BYTES = 32 * 1024  # the request line and headers together (nginx takes 4 x 8 KB by default)
MOST_CONNECTIONS = 1000
THREADS = 8

BodyLimit = Callable[[str, Mapping[str, str]], int]


def create_server(app: Flask, host: str, port: int) -> Any:
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
        channel_timeout=HEAD_SECONDS,  # silence before or between requests
        cleanup_interval=1,
        max_request_header_size=HEAD_BYTES,
        max_request_body_size=IMPORT_BODY_LIMIT + 1,  # waitress refuses a length equal to it
        asyncore_use_poll=True,  # select() fails on a descriptor numbered 1024 or more
    )
    connection = _connection_class(functools.partial(body_limit, app))
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


def _connection_class(limit: BodyLimit) -> type[HTTPChannel]:
    class Request(HTTPRequestParser):  # type: ignore[misc]  # waitress is untyped
        error: Any  # waitress's: the answer to give instead of the app's

        def __init__(self, adj: Any) -> None:
            super().__init__(adj)
            self.began = time.monotonic()  # its first bytes arrived
            self.allowed: int | None = None

        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            if self.headers_finished and self.error is None:
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
            return self.began + HEAD_SECONDS + (body or 0) / BODY_BYTES_PER_SECOND

    class Connection(HTTPChannel):  # type: ignore[misc]
        parser_class = Request

        def readable(self) -> bool:
            # called by the server's loop at least once a second, for every connection
            request = self.request
            if request is not None and not self.requests and time.monotonic() > request.deadline():
                self.will_close = True  # the request did not arrive in time: closed, unanswered
            ready: bool = super().readable()
            return ready

    return Connection

"""A raw SMTP server on 127.0.0.1 that misbehaves on purpose, the way a hostile or intercepted relay
would: it floods a reply with endless continuation lines, or drips it a byte at a time. For each
connection it records how long the client held on, from a mark the script sets until the client
left, so a test can see when the client gave up."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

FLOOD_LINE = b"220-" + b"welcome to a relay that never stops talking " * 2 + b"\r\n"


class Gone(Exception):
    """The client closed the connection."""


class Peer:
    """One client's connection, seen from the server."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.since = time.monotonic()  # where the hold is measured from; `mark` moves it
        self.sent = 0
        self.pause = 0.0  # seconds each reply waits before it goes, whole
        self._buffer = b""

    def mark(self) -> None:
        self.since = time.monotonic()

    def say(self, data: bytes) -> None:
        if self.pause:
            time.sleep(self.pause)
        try:
            self.conn.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise Gone from None
        self.sent += len(data)

    def left(self, seconds: float) -> bool:
        """Wait up to `seconds` for the client to close; True once it has (data it sends is kept)."""
        ready, _, _ = select.select([self.conn], [], [], seconds)
        if not ready:
            return False
        try:
            data = self.conn.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return True
        except ssl.SSLWantReadError:  # a TLS record not yet whole
            return False
        if not data:
            return True
        self._buffer += data
        return False

    def line(self) -> bytes:
        """The client's next command line, b"" once it has left."""
        while b"\n" not in self._buffer:
            try:
                data = self.conn.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return b""
            if not data:
                return b""
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def message(self) -> None:
        """Read a message up to its final dot."""
        while b"\r\n.\r\n" not in b"\r\n" + self._buffer:
            data = self.conn.recv(65536)
            if not data:
                raise Gone
            self._buffer += data
        _, _, self._buffer = (b"\r\n" + self._buffer).partition(b"\r\n.\r\n")

    def flood(self, limit: int = 100 * 1024 * 1024) -> None:
        """Continuation lines of a reply that never ends, until the client leaves or `limit` bytes."""
        block = FLOOD_LINE * (65536 // len(FLOOD_LINE))
        while self.sent < limit and not self.stop.is_set():
            self.say(block)

    def drip(self, data: bytes, *, every: float, seconds: float) -> None:
        """`data` one byte every `every` seconds, for at most `seconds`, or until the client leaves."""
        end = time.monotonic() + seconds
        for byte in data:
            if time.monotonic() >= end or self.stop.is_set():
                return
            self.say(bytes([byte]))
            if self.left(every):
                raise Gone

    def starttls(self, context: ssl.SSLContext) -> None:
        self.conn = context.wrap_socket(self.conn, server_side=True)
        self._buffer = b""


Script = Callable[[Peer], None]


def refuse(peer: Peer) -> None:
    peer.say(b"554 5.3.2 not now\r\n")


class HostileRelay:
    """Runs `script` for the first connection and `later` for the others; `held` has, per
    connection, the seconds from the script's mark until the client left (or None if the client
    had not left within `linger` seconds after the script ended)."""

    def __init__(self, script: Script, *, later: Script | None = None, linger: float = 10.0) -> None:
        self.script, self.later, self.linger = script, later or script, linger
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = int(self.server.getsockname()[1])
        self.held: list[float | None] = []
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            script = self.later if self.threads else self.script
            thread = threading.Thread(target=self._serve, args=(conn, script), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket, script: Script) -> None:
        peer = Peer(conn, self.stop)
        held: float | None = None
        try:
            try:
                script(peer)
                end = time.monotonic() + self.linger
                while not peer.left(0.05):
                    if time.monotonic() >= end or self.stop.is_set():
                        break
                else:
                    held = time.monotonic() - peer.since
            except Gone:
                held = time.monotonic() - peer.since
        except (OSError, ssl.SSLError):
            held = time.monotonic() - peer.since
        finally:
            peer.conn.close()
            with self.lock:
                self.held.append(held)
                self.sent.append(peer.sent)

    def first_hold(self, timeout: float = 20.0) -> float | None:
        """How long the first client held on, once it is over; None if it is not over in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.held:
                    return self.held[0]
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(5)
        for thread in self.threads:
            thread.join(5)


def tls_server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


def converse(
    peer: Peer,
    *,
    greeting: bytes = b"220 relay.example ESMTP\r\n",
    ehlo: bytes = b"250-relay.example\r\n250 PIPELINING\r\n",
    at: dict[bytes, Script] | None = None,
    after_dot: Script | None = None,
    tls: ssl.SSLContext | None = None,
    after_tls: Script | None = None,
) -> None:
    """An SMTP server that takes every message, except where a script answers instead: `at` maps
    a command's first four letters (b"RCPT") to the script that answers it, `after_dot` answers
    the message's final dot, and `after_tls` speaks first after STARTTLS (offered with `tls`).
    Each script's hold is measured from when it starts."""
    peer.say(greeting)
    while line := peer.line():
        verb = line[:4].upper()
        script = (at or {}).get(verb)
        if script is not None:
            peer.mark()
            script(peer)
        elif verb in (b"EHLO", b"HELO"):
            peer.say(ehlo.replace(b"250 ", b"250-") + b"250 STARTTLS\r\n" if tls else ehlo)
        elif verb == b"STAR" and tls is not None:
            peer.say(b"220 2.0.0 go ahead\r\n")
            peer.starttls(tls)
            tls = None  # offered once
            if after_tls is not None:
                peer.mark()
                after_tls(peer)
        elif verb == b"DATA":
            peer.say(b"354 go ahead\r\n")
            peer.message()
            peer.mark()
            (after_dot or (lambda p: p.say(b"250 2.0.0 queued\r\n")))(peer)
        elif verb == b"QUIT":
            peer.say(b"221 bye\r\n")
            return
        else:
            peer.say(b"250 2.0.0 ok\r\n")

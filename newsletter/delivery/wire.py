"""An SMTP session's socket: replies read through a buffer of our own, within caps a hostile
server cannot grow and deadlines it cannot stretch, and writes that never wait past them."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import Any

__all__ = [
    "REPLY_BYTES",
    "REPLY_LINES",
    "REPLY_LINE_OCTETS",
    "ConnectionLost",
    "Overdue",
    "ProtocolError",
    "Wire",
    "kernel_timeouts",
]

# What one reply may hold, so a hostile or broken server cannot grow our memory: RFC 5321 allows
# 512 octets a line; lenient servers overrun it, so four times that, and lines and bytes in all.
REPLY_LINE_OCTETS = 2048
REPLY_LINES = 100
REPLY_BYTES = 64 * 1024


class ConnectionLost(Exception):
    pass


class ProtocolError(ConnectionLost):
    """The server broke the protocol (a reply malformed, over the caps, nobody asked for, or of a
    kind its command cannot get): nothing it says after can be trusted, so the session is dropped."""


class Overdue(TimeoutError):
    """A step's deadline passed: the session's setup, or one message."""


_DEADLINE_SLACK = 0.05  # seconds a wait may run past a deadline rather than re-arm the socket
_READ_OCTETS = 16384  # a read's most: a reply or a pipelined burst of them comes in one
_LINE_ENDS = (b"\r\n", b"\n")


def _timeval(seconds: float) -> bytes:
    seconds = max(seconds, 0.001)  # a zero timeval would mean "wait for ever"
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking calls with the timeout kept by the kernel (SO_RCVTIMEO/SO_SNDTIMEO): Python's own
    timeout mode would poll() before every send and receive of the hot path. Plain TCP only: the
    ssl module retries a blocking socket's EAGAIN for ever, so TLS keeps Python's timeout."""
    sock.settimeout(None)
    value = _timeval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class Wire:
    """The socket, read through a buffer of our own (so a reply nobody asked for is seen), with two
    deadlines: the awaited reply's (`reply_due`, the timeout from its command) and the step's
    (`step_due`: the session's setup, or one message). A reply must come whole by the first of
    them however slowly it drips; a send waits at most the timeout at a time, and never past
    the step's. An expired kernel timeout is a TimeoutError, not "the server closed it"."""

    def __init__(self, sock: socket.socket, timeout: float, step_due: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.kernel = sock.gettimeout() is None  # SO_RCVTIMEO/SO_SNDTIMEO keep it (plain TCP)
        self.armed = timeout  # what SO_RCVTIMEO is set to
        self.reply_due = time.monotonic() + timeout
        self.step_due = step_due
        self.buffer = b""
        self.start = 0  # where the unread part of `buffer` begins

    @property
    def pending(self) -> bool:
        """Bytes have come that no reply read so far took."""
        return self.start < len(self.buffer)

    def line(self) -> bytes:
        """The next reply line through its LF, of at most REPLY_LINE_OCTETS octets."""
        scanned = self.start
        while True:
            end = self.buffer.find(b"\n", scanned, self.start + REPLY_LINE_OCTETS)
            if end >= 0:
                line = self.buffer[self.start : end + 1]
                self.start = end + 1
                return line
            rest = self.buffer[self.start :]
            if len(rest) >= REPLY_LINE_OCTETS:
                raise ProtocolError(f"the server sent a reply line longer than {REPLY_LINE_OCTETS} octets")
            data = self._recv()
            if not data:
                raise ConnectionLost("the server closed the connection")
            scanned = len(rest)
            self.buffer, self.start = rest + data, 0

    def _recv(self) -> bytes:
        overdue = self.step_due <= self.reply_due  # which deadline a timeout here is
        left = min(self.step_due, self.reply_due) - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            if self.kernel:
                if abs(self.armed - left) > _DEADLINE_SLACK:  # not on the hot path: a reply in one read
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(left))
                    self.armed = left
                try:
                    return self.sock.recv(_READ_OCTETS)
                except BlockingIOError:  # SO_RCVTIMEO ran out on a blocking socket
                    raise TimeoutError from None
            self.sock.settimeout(left)
            try:
                return self.sock.recv(_READ_OCTETS)
            finally:
                self.sock.settimeout(self.timeout)
        except TimeoutError:
            if overdue:
                raise Overdue from None
            raise

    def send(self, data: bytes) -> None:
        """`data` whole."""
        view = memoryview(data)
        while view:
            view = view[self._send_once(self.sock.send, view) :]

    def send_message(self, message: bytes, end: bytes) -> None:
        """A message and its end-of-data line: over plain TCP in one call (scatter-gather), over TLS
        one after the other."""
        if isinstance(self.sock, ssl.SSLSocket):
            self.send(message)
            self.send(end)
            return
        sent = self._send_once(self.sock.sendmsg, [message, end])
        if sent < len(message) + len(end):  # a short write: the rest the plain way
            self.send((message + end)[sent:])

    def _send_once(self, call: Any, data: Any) -> int:
        """One send that waits at most the timeout, and not past the step's deadline."""
        left = self.step_due - time.monotonic()
        if left >= self.timeout:  # the hot path: the socket's own timeout cannot overrun the step's
            try:
                return int(call(data))
            except BlockingIOError:  # SO_SNDTIMEO ran out on a blocking socket
                raise TimeoutError from None
        if left <= 0:
            raise Overdue
        self._send_timeout(left)
        try:
            return int(call(data))
        except (BlockingIOError, TimeoutError):
            raise Overdue from None
        finally:
            self._send_timeout(self.timeout)

    def _send_timeout(self, seconds: float) -> None:
        if self.kernel:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
        else:
            self.sock.settimeout(seconds)

    def reply(self) -> tuple[int, str]:
        """One reply, multi-line ones joined with newlines: every line a code from 200 to 599,
        the same on each, then a space, a dash (more lines follow) or the line's end; within the
        caps and the deadlines (else a ConnectionLost or a TimeoutError: the session is over)."""
        lines = []
        size = 0
        code = b""
        while True:
            line = self.line()
            size += len(line)
            head, mark = line[:3], line[3:4]
            if not (
                head.isdigit()
                and 0x32 <= head[0] <= 0x35  # "2" to "5"
                and (mark == b" " or mark == b"-" or line[3:] in _LINE_ENDS)
            ):
                raise ProtocolError(f"not an SMTP reply: {line[:40]!r}")
            if code and head != code:
                raise ProtocolError(
                    f"a reply whose lines carry different codes: {code.decode()} then {head.decode()}"
                )
            code = head
            lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
            if mark != b"-":
                return int(head), "\n".join(lines)
            if len(lines) >= REPLY_LINES:
                raise ProtocolError(f"the server sent a reply of more than {REPLY_LINES} lines")
            if size > REPLY_BYTES:
                raise ProtocolError(f"the server sent a reply of more than {REPLY_BYTES // 1024} KB")

    def put(self, data: bytes) -> None:
        """Commands on the wire: each of their replies is due within the timeout from now. Every
        earlier reply has been read by then, so anything still buffered is a reply nobody asked
        for, and would pass for the answer to these commands."""
        if self.start < len(self.buffer):
            self.unasked()
        self.reply_due = time.monotonic() + self.timeout
        self.send(data)

    def unasked(self) -> None:
        """Nothing may be buffered that no reply read so far took: it would pass for an answer."""
        if self.pending:
            extra = self.buffer[self.start :][:40]
            raise ProtocolError(f"the server sent a reply nobody asked for: {extra!r}")

"""Where composed messages go: the outbox folder (the embedded default) or an SMTP server."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..config import Settings
from ..db.models import DeliveryStatus
from ..errors import ConfigError, TransportError
from ..private import open_private, private_folder

__all__ = [
    "Envelope",
    "SendResult",
    "Transport",
    "OutboxTransport",
    "SmtpTransport",
    "open_transport",
    "classify_reply",
    "REPLY_BYTES",
    "REPLY_LINES",
    "REPLY_LINE_OCTETS",
]


# What one reply may hold, so a hostile or broken server cannot grow our memory: RFC 5321 allows
# 512 octets a line; lenient servers overrun it, so four times that, and lines and bytes in all.
REPLY_LINE_OCTETS = 2048
REPLY_LINES = 100
REPLY_BYTES = 64 * 1024


class Envelope(NamedTuple):
    mail_from: str
    rcpt_to: str
    key: str  # names the message in the outbox: "issue-3/000042"


@dataclass(frozen=True)
class SendResult:
    status: DeliveryStatus  # SENT, DEFERRED, BOUNCED, FAILED, or UNKNOWN (no reply after the final dot)
    reply: str
    throttled: bool = False  # the server asked us to slow down
    stage: str = ""  # the command whose reply decided (MAIL, RCPT, DATA); "" when none did
    code: int = 0  # that reply's code

    @property
    def recipient_refused(self) -> bool:
        """The server refused this recipient and would take others: any RCPT failure but 421 (the
        server closes the session). Its words are not read: they may echo the address."""
        return self.stage == "RCPT" and self.code >= 400 and self.code != 421


class Transport(Protocol):
    def send(self, envelope: Envelope, message: bytes) -> SendResult: ...

    def close(self) -> None: ...


# What a server says when it wants fewer messages from us, not when it defers one recipient
# (greylisting, a full mailbox, a lookup failure all say "try again later" too).
_THROTTLE = re.compile(r"\brate\b|rate.?limit|too many|throttl", re.I)


def classify_reply(code: int, text: str, *, stage: str) -> SendResult:
    """The fate of a message from the server's reply and the stage (RCPT or DATA) it came at.
    Only 421 (the server closes the channel) and a 4xx whose words say rate, too many or throttle
    (4.7.0 rate limits, 452 too many recipients) slow the whole send; any other 4xx defers the
    one recipient."""
    reply = f"{code} {text}".strip()
    if 200 <= code < 300:
        return SendResult(DeliveryStatus.SENT, reply, stage=stage, code=code)
    throttled = code == 421 or (400 <= code < 500 and bool(_THROTTLE.search(text)))
    if 400 <= code < 500:
        return SendResult(DeliveryStatus.DEFERRED, reply, throttled=throttled, stage=stage, code=code)
    if stage == "RCPT":
        return SendResult(DeliveryStatus.BOUNCED, reply, stage=stage, code=code)
    return SendResult(DeliveryStatus.FAILED, reply, stage=stage, code=code)


class OutboxTransport:
    """One .eml file per message, written whole (temporary file, then rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, envelope: Envelope, message: bytes) -> SendResult:
        path = self.folder / f"{envelope.key}.eml"
        private_folder(path.parent)
        tmp = path.with_suffix(".eml.tmp")
        with open_private(tmp, "wb") as f:
            f.write(message)
        os.replace(tmp, path)
        return SendResult(DeliveryStatus.SENT, f"250 written to {path}")

    def close(self) -> None:
        pass


class _ConnectionLost(Exception):
    pass


class _SocketReader(io.RawIOBase):
    """The socket as a raw stream that keeps one deadline for a whole reply, however slowly it
    drips, and whose expired receive timeout is a TimeoutError: a socket file would report a
    kernel timeout (EAGAIN) as the end of the stream, "the server closed it"."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._kernel = sock.gettimeout() is None  # SO_RCVTIMEO keeps the timeout (plain TCP)
        self._armed = timeout  # what SO_RCVTIMEO is set to
        self.deadline = time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply in time")
        if not self._kernel:
            self._sock.settimeout(left)
            try:
                return self._sock.recv_into(buffer)
            finally:
                self._sock.settimeout(self._timeout)  # sends keep the whole timeout
        if abs(self._armed - left) > _DEADLINE_SLACK:  # not on the hot path: a reply in one read
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(left))
            self._armed = left
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:  # SO_RCVTIMEO ran out on a blocking socket
            raise TimeoutError("no reply in time") from None


_DEADLINE_SLACK = 0.05  # seconds a read may run past the deadline rather than re-arm the socket


def _timeval(seconds: float) -> bytes:
    seconds = max(seconds, 0.001)  # a zero timeval would mean "wait for ever"
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking calls with the timeout kept by the kernel (SO_RCVTIMEO/SO_SNDTIMEO): Python's own
    timeout mode would poll() before every send and receive of the hot path. Plain TCP only: the
    ssl module retries a blocking socket's EAGAIN for ever, so TLS keeps Python's timeout."""
    sock.settimeout(None)
    value = _timeval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class SmtpTransport:
    """One SMTP session, reused for every message and reopened after a drop.

    Written for the send loop's hot path: MAIL, RCPT and DATA go in one write when the server
    offers PIPELINING (RFC 2920), the message goes in one more, so a message costs two round
    trips and no per-byte Python work (dot-stuffing is one bytes.replace)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        username: str = "",
        password: str = "",
        timeout: float = 30,
        tls_context: ssl.SSLContext | None = None,
        helo_name: str | None = None,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout = username, password, timeout
        self.tls_context = tls_context
        self.helo_name = helo_name or socket.getfqdn() or "localhost"
        self.extensions: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._raw: _SocketReader | None = None
        self._reader: Any = None

    # -- the session --------------------------------------------------------------------------

    def open(self) -> None:
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.security == "none":
                _kernel_timeouts(sock, self.timeout)
            if self.security == "tls":
                sock = self._context().wrap_socket(sock, server_hostname=self.host)
            self._attach(sock)
            code, text = self._reply()
            if code != 220:
                raise TransportError(f"the SMTP server {where} refused the session: {code} {text}")
            self._ehlo()
            if self.security == "starttls":
                if "STARTTLS" not in self.extensions:
                    raise TransportError(
                        f"the SMTP server {where} does not offer STARTTLS (set [smtp] security)"
                    )
                code, text = self._command(b"STARTTLS")
                if code != 220:
                    raise TransportError(f"the SMTP server {where} refused STARTTLS: {code} {text}")
                assert self._sock is not None
                self._attach(self._context().wrap_socket(self._sock, server_hostname=self.host))
                self._ehlo()
            if self.username:
                self._login()
        except TransportError:
            self._drop()
            raise
        except (OSError, _ConnectionLost) as exc:
            self._drop()
            raise TransportError(f"cannot connect to the SMTP server {where}: {self._lost(exc)}") from None

    def _context(self) -> ssl.SSLContext:
        return self.tls_context or ssl.create_default_context()

    def _attach(self, sock: socket.socket) -> None:
        """Read replies from `sock`; the first (a greeting) is due within the timeout from now."""
        self._sock = sock
        self._raw = _SocketReader(sock, self.timeout)
        self._reader = io.BufferedReader(self._raw, 65536)

    def _ehlo(self) -> None:
        code, text = self._command(b"EHLO " + self.helo_name.encode("ascii", "replace"))
        if code != 250:
            raise TransportError(f"the SMTP server {self.host}:{self.port} refused EHLO: {code} {text}")
        self.extensions = {}
        for line in text.split("\n")[1:]:
            name, _, params = line.strip().partition(" ")
            self.extensions[name.upper()] = params

    def _login(self) -> None:
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or not mechanisms:
            secret = base64.b64encode(f"\0{self.username}\0{self.password}".encode()).decode("ascii")
            code, text = self._command(f"AUTH PLAIN {secret}".encode("ascii"))
        else:
            code, text = self._command(b"AUTH LOGIN")
            if code == 334:
                code, text = self._command(base64.b64encode(self.username.encode()))
            if code == 334:
                code, text = self._command(base64.b64encode(self.password.encode()))
        if code != 235:
            raise TransportError(f"the SMTP server {self.host}:{self.port} refused the login: {code} {text}")

    def _reply(self) -> tuple[int, str]:
        """One reply, multi-line ones joined with newlines, within the caps and by the deadline
        that `_put` set (any over is a _ConnectionLost or a TimeoutError: the session is over)."""
        lines = []
        size = 0
        while True:
            line = self._reader.readline(REPLY_LINE_OCTETS + 1)
            if not line:
                raise _ConnectionLost("the server closed the connection")
            if len(line) > REPLY_LINE_OCTETS:
                raise _ConnectionLost(f"the server sent a reply line longer than {REPLY_LINE_OCTETS} octets")
            size += len(line)
            lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
            if line[3:4] != b"-":
                try:
                    return int(line[:3]), "\n".join(lines)
                except ValueError:
                    raise _ConnectionLost(f"not an SMTP reply: {line[:40]!r}") from None
            if len(lines) >= REPLY_LINES:
                raise _ConnectionLost(f"the server sent a reply of more than {REPLY_LINES} lines")
            if size > REPLY_BYTES:
                raise _ConnectionLost(f"the server sent a reply of more than {REPLY_BYTES // 1024} KB")

    def _put(self, data: bytes) -> None:
        """Commands on the wire: each of their replies is due within the timeout from now."""
        assert self._sock is not None
        self._due()
        self._sock.sendall(data)

    def _due(self) -> None:
        assert self._raw is not None
        self._raw.deadline = time.monotonic() + self.timeout

    def _command(self, line: bytes) -> tuple[int, str]:
        self._put(line + b"\r\n")
        return self._reply()

    # -- one message --------------------------------------------------------------------------

    def send(self, envelope: Envelope, message: bytes) -> SendResult:
        """Deliver one message. Raises TransportError only when no session could be opened
        (nothing was sent); every other outcome is a SendResult."""
        if any(c in envelope.mail_from + envelope.rcpt_to for c in "\r\n<>"):
            return SendResult(
                DeliveryStatus.FAILED, "refused here: an address contains a forbidden character"
            )
        if self._sock is None:
            self.open()
        assert self._sock is not None
        mail = f"MAIL FROM:<{envelope.mail_from}>\r\n".encode()
        rcpt = f"RCPT TO:<{envelope.rcpt_to}>\r\n".encode()
        after_dot = False
        try:
            if "PIPELINING" in self.extensions:
                self._put(mail + rcpt + b"DATA\r\n")
                replies = [self._reply(), self._reply(), self._reply()]
            else:
                replies = [self._command(mail[:-2])]
                if replies[0][0] == 250:
                    replies.append(self._command(rcpt[:-2]))
                    if replies[1][0] in (250, 251):
                        replies.append(self._command(b"DATA"))
            failed = self._first_failure(replies)
            if failed is not None:
                return failed
            self._send_body(message)
            after_dot = True
            self._due()
            code, text = self._reply()
            return self._after(classify_reply(code, text, stage="DATA"), code)
        except (OSError, _ConnectionLost) as exc:
            self._drop()
            what = self._lost(exc)
            if after_dot:  # the server may have taken it and lost only its answer (RFC 1047)
                return SendResult(
                    DeliveryStatus.UNKNOWN, f"{what} after the message's final dot: it may be delivered"
                )
            return SendResult(DeliveryStatus.DEFERRED, f"connection lost: {what}")

    def _lost(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no reply within {self.timeout:g} seconds"
        if isinstance(exc, _ConnectionLost):
            return str(exc)
        return f"the connection failed ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)

    def _send_body(self, message: bytes) -> None:
        """The message and its end-of-data line, dot-stuffed only if it needs it (composed ones don't)."""
        assert self._sock is not None
        if message.startswith(b".") or b"\r\n." in message:
            message = (b"." if message.startswith(b".") else b"") + message.replace(b"\r\n.", b"\r\n..")
        end = b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n"
        if isinstance(self._sock, ssl.SSLSocket):  # no scatter-gather over TLS
            self._sock.sendall(message)
            self._sock.sendall(end)
            return
        view = memoryview(message)
        sent = self._sock.sendmsg([view, end])
        if sent < len(message) + len(end):  # a short write: the rest the plain way
            rest = message + end
            self._sock.sendall(rest[sent:])

    def _first_failure(self, replies: list[tuple[int, str]]) -> SendResult | None:
        stages = ("MAIL", "RCPT", "DATA")
        for stage, (code, text) in zip(stages, replies, strict=False):
            ok = code == 354 if stage == "DATA" else 200 <= code < 300
            if not ok:
                if len(replies) == 3 and replies[2][0] == 354:
                    # the server is waiting for a message we will not send: end it empty and reset
                    self._put(b".\r\n")
                    self._reply()
                result = classify_reply(code, text, stage=stage)
                if code != 421:
                    self._rset()
                return self._after(result, code)
        return None

    def _after(self, result: SendResult, code: int) -> SendResult:
        if code == 421:  # the server is closing the channel (RFC 5321 3.8)
            self._drop()
        return result

    def _rset(self) -> None:
        try:
            self._command(b"RSET")
        except (OSError, _ConnectionLost):
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._raw = None
        self._reader = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError, _ConnectionLost):
                self._command(b"QUIT")
            self._drop()


def open_transport(settings: Settings) -> Transport:
    d = settings.delivery
    if d.transport == "outbox":
        return OutboxTransport(settings.path(d.outbox_dir))
    if d.transport == "smtp":
        s = settings.smtp
        return SmtpTransport(
            s.host,
            s.port,
            security=s.security,
            username=s.username,
            password=settings.smtp_password,
            timeout=s.timeout_seconds,
        )
    raise ConfigError(f"unknown delivery transport {d.transport!r}")  # pragma: no cover

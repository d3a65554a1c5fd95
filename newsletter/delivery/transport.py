"""Where composed messages go: the outbox folder (the embedded default) or an SMTP server."""

from __future__ import annotations

import base64
import contextlib
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
from ..links import OUTBOX_SUFFIX
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
    "STEP_TIMEOUTS",
]


# What one reply may hold, so a hostile or broken server cannot grow our memory: RFC 5321 allows
# 512 octets a line; lenient servers overrun it, so four times that, and lines and bytes in all.
REPLY_LINE_OCTETS = 2048
REPLY_LINES = 100
REPLY_BYTES = 64 * 1024
# The session's setup (greeting to the end of AUTH), and each message (MAIL to its final reply),
# must be over within this many [smtp] timeout_seconds, however promptly each reply comes.
STEP_TIMEOUTS = 2


class Envelope(NamedTuple):
    mail_from: str
    rcpt_to: str
    key: str  # names the message in the outbox (links: issue_copy_key, "issue-3/00000042")


@dataclass(frozen=True)
class SendResult:
    status: DeliveryStatus  # SENT, DEFERRED, BOUNCED, FAILED, or UNKNOWN (no reply after the final dot)
    reply: str
    throttled: bool = False  # the server asked us to slow down
    # the command whose reply decided, or was awaited when the session failed (MAIL, RCPT, DATA:
    # its own reply or the message's final one); "" when none did
    stage: str = ""
    code: int = 0  # that reply's code; 0 when none came
    enhanced: tuple[int, int, int] | None = None  # its RFC 3463 status (5.7.1), read from failures
    timed_out: bool = False  # the session failed waiting for the stage's reply

    @property
    def own_failure(self) -> bool:
        """The failure is this recipient's or this message's own, and says nothing of whether the
        relay takes mail: a refused recipient (any RCPT failure but 421, which closes the
        session), a recipient the relay could not check in time, or this message's content or
        policy refused for good at DATA (5.6.x, 5.7.x). The reply's words are not read: they may
        echo what a stranger chose."""
        if self.stage == "RCPT":
            return self.timed_out or (self.code >= 400 and self.code != 421)
        return (
            self.stage == "DATA"
            and 500 <= self.code < 600
            and self.enhanced is not None
            and self.enhanced[:2] in ((5, 6), (5, 7))
        )


class Transport(Protocol):
    def send(self, envelope: Envelope, message: bytes) -> SendResult: ...

    def close(self) -> None: ...


# What a server says when it wants fewer messages from us, not when it defers one recipient
# (greylisting, a full mailbox, a lookup failure all say "try again later" too).
_THROTTLE = re.compile(r"\brate\b|rate.?limit|too many|throttl", re.I)
# What in a reply the recipient (a stranger) may have chosen: anything in angle or square brackets
# and what another server "said" (each pattern scans a stretch of text once: a hostile reply
# cannot make it backtrack); then every token with an @ or a dotted name (addresses, hosts, IPs).
_CHOSEN_BY_OTHERS = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|said:[^\n]*", re.I)
_DOTTED = re.compile(r"\w\.\w")
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# Enhanced status subjects about one recipient or one message, never the pool: addressing (X.1),
# mailbox (X.2), content (X.6).
_ONE_RECIPIENTS = frozenset((1, 2, 6))


def enhanced_status(code: int, text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 status at the start of a reply's text ("5.7.1 ..."), if its class is the code's."""
    found = _ENHANCED.match(text)
    if found is None or int(found[1]) != code // 100:
        return None
    return int(found[1]), int(found[2]), int(found[3])


def _servers_own_words(text: str, recipient: str) -> str:
    """The reply without what the recipient may have chosen: its address, local part and domain
    wherever they are echoed, and every address-like token."""
    local, _, domain = recipient.rpartition("@")
    for chosen in (recipient, domain, local):
        if chosen:
            text = re.sub(rf"(?<!\w){re.escape(chosen)}(?!\w)", " ", text, flags=re.I)
    tokens = _CHOSEN_BY_OTHERS.sub(" ", text).split()
    return " ".join(t for t in tokens if "@" not in t and not _DOTTED.search(t))


def classify_reply(code: int, text: str, *, stage: str, recipient: str = "") -> SendResult:
    """The fate of a message from the server's reply and the stage (RCPT or DATA) it came at.
    Only 421 (the server closes the channel) and a 4xx that asks us to slow down (4.7.0 rate
    limits, 452 too many recipients) slow the whole send, and only the server's own words count:
    not `recipient` or any address a reply echoes, nor a reply whose enhanced status is about one
    recipient or message (4.1.x, 4.2.x, 4.6.x). Any other 4xx defers the one recipient."""
    if 200 <= code < 300:
        return SendResult(DeliveryStatus.SENT, f"{code} {text}".strip(), stage=stage, code=code)
    reply = f"{code} {text}".strip()
    enhanced = enhanced_status(code, text)
    if 400 <= code < 500:
        throttled = code == 421 or (
            (enhanced is None or enhanced[1] not in _ONE_RECIPIENTS)
            and bool(_THROTTLE.search(_servers_own_words(text, recipient)))
        )
        return SendResult(
            DeliveryStatus.DEFERRED, reply, throttled=throttled, stage=stage, code=code, enhanced=enhanced
        )
    status = DeliveryStatus.BOUNCED if stage == "RCPT" else DeliveryStatus.FAILED
    return SendResult(status, reply, stage=stage, code=code, enhanced=enhanced)


class OutboxTransport:
    """One .eml file per message, written whole (temporary file, then rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, envelope: Envelope, message: bytes) -> SendResult:
        path = self.folder / f"{envelope.key}{OUTBOX_SUFFIX}"
        private_folder(path.parent)
        tmp = path.with_suffix(f"{OUTBOX_SUFFIX}.tmp")
        with open_private(tmp, "wb") as f:
            f.write(message)
        os.replace(tmp, path)
        return SendResult(DeliveryStatus.SENT, f"250 written to {path}")

    def close(self) -> None:
        pass


class _ConnectionLost(Exception):
    pass


class _ProtocolError(_ConnectionLost):
    """The server broke the protocol (a reply malformed, over the caps, nobody asked for, or of a
    kind its command cannot get): nothing it says after can be trusted, so the session is dropped."""


class _Overdue(TimeoutError):
    """A step's deadline passed: the session's setup, or one message."""


_DEADLINE_SLACK = 0.05  # seconds a wait may run past a deadline rather than re-arm the socket
_READ_OCTETS = 16384  # a read's most: a reply or a pipelined burst of them comes in one
_STAGES = ("MAIL", "RCPT", "DATA")
_LINE_ENDS = (b"\r\n", b"\n")


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


class _Wire:
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
                raise _ProtocolError(f"the server sent a reply line longer than {REPLY_LINE_OCTETS} octets")
            data = self._recv()
            if not data:
                raise _ConnectionLost("the server closed the connection")
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
                raise _Overdue from None
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
            raise _Overdue
        self._send_timeout(left)
        try:
            return int(call(data))
        except (BlockingIOError, TimeoutError):
            raise _Overdue from None
        finally:
            self._send_timeout(self.timeout)

    def _send_timeout(self, seconds: float) -> None:
        if self.kernel:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
        else:
            self.sock.settimeout(seconds)


class SmtpTransport:
    """One SMTP session, reused for every message and reopened after a drop.

    Written for the send loop's hot path: MAIL, RCPT and DATA go in one write when the server
    offers PIPELINING (RFC 2920), the message goes in one more, so a message costs two round
    trips and no per-byte Python work (dot-stuffing is one bytes.replace).

    A server has `timeout` for each reply, STEP_TIMEOUTS x `timeout` for the session's setup and
    for each message; a reply that is malformed, over the caps, of a kind its command cannot get
    (a 250 to DATA) or that nobody asked for ends the session."""

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
        self._wire: _Wire | None = None
        self._step = ""  # what the step's deadline bounds, for the error
        self._step_due = 0.0
        self._awaiting = ""  # the stage whose reply is awaited

    # -- the session --------------------------------------------------------------------------

    def open(self) -> None:
        where = f"{self.host}:{self.port}"
        self._begin("the session's setup")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.security == "none":
                _kernel_timeouts(sock, self.timeout)
            if self.security == "tls":
                sock = self._handshake(sock)
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
                assert self._wire is not None
                if self._wire.pending:  # written before TLS, it would pass for a reply within it
                    raise _ProtocolError("the server sent more after its 220 to STARTTLS")
                self._attach(self._handshake(self._wire.sock))
                self._ehlo()
            if self.username:
                self._login()
        except TransportError:
            self._drop()
            raise
        except (OSError, _ConnectionLost) as exc:
            self._drop()
            raise TransportError(f"cannot connect to the SMTP server {where}: {self._lost(exc)}") from None

    def _begin(self, step: str) -> None:
        """A step starts (the session's setup, a message): it must be over within its deadline."""
        self._step = step
        self._step_due = time.monotonic() + self.timeout * STEP_TIMEOUTS
        if self._wire is not None:
            self._wire.step_due = self._step_due

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        """TLS over `sock`, its handshake within the timeout and by the setup's deadline."""
        left = self._step_due - time.monotonic()
        if left <= 0:
            raise _Overdue
        sock.settimeout(min(self.timeout, left))
        tls = self._context().wrap_socket(sock, server_hostname=self.host)
        tls.settimeout(self.timeout)
        return tls

    def _context(self) -> ssl.SSLContext:
        return self.tls_context or ssl.create_default_context()

    def _attach(self, sock: socket.socket) -> None:
        """Read replies from `sock`; the first (a greeting) is due within the timeout from now."""
        self._wire = _Wire(sock, self.timeout, self._step_due)

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
        """One reply, multi-line ones joined with newlines: every line a code from 200 to 599,
        the same on each, then a space, a dash (more lines follow) or the line's end; within the
        caps and the deadlines (else a _ConnectionLost or a TimeoutError: the session is over)."""
        assert self._wire is not None
        lines = []
        size = 0
        code = b""
        while True:
            line = self._wire.line()
            size += len(line)
            head, mark = line[:3], line[3:4]
            if not (
                head.isdigit()
                and 0x32 <= head[0] <= 0x35  # "2" to "5"
                and (mark == b" " or mark == b"-" or line[3:] in _LINE_ENDS)
            ):
                raise _ProtocolError(f"not an SMTP reply: {line[:40]!r}")
            if code and head != code:
                raise _ProtocolError(
                    f"a reply whose lines carry different codes: {code.decode()} then {head.decode()}"
                )
            code = head
            lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
            if mark != b"-":
                return int(head), "\n".join(lines)
            if len(lines) >= REPLY_LINES:
                raise _ProtocolError(f"the server sent a reply of more than {REPLY_LINES} lines")
            if size > REPLY_BYTES:
                raise _ProtocolError(f"the server sent a reply of more than {REPLY_BYTES // 1024} KB")

    def _put(self, data: bytes) -> None:
        """Commands on the wire: each of their replies is due within the timeout from now. Every
        earlier reply has been read by then, so anything still buffered is a reply nobody asked
        for, and would pass for the answer to these commands."""
        wire = self._wire
        assert wire is not None
        if wire.start < len(wire.buffer):
            self._unasked()
        wire.reply_due = time.monotonic() + self.timeout
        wire.send(data)

    def _unasked(self) -> None:
        assert self._wire is not None
        if self._wire.pending:
            extra = self._wire.buffer[self._wire.start :][:40]
            raise _ProtocolError(f"the server sent a reply nobody asked for: {extra!r}")

    def _command(self, line: bytes) -> tuple[int, str]:
        self._put(line + b"\r\n")
        return self._reply()

    def _answer(self, stage: str, *, final: bool = False) -> tuple[int, str]:
        """The reply to `stage`'s command, or to the message (`final`), which must be of a kind it
        can get: 354 to DATA, 2xx to the others, or a 4xx or 5xx."""
        self._awaiting = stage
        code, text = self._reply()
        if code < 400 and (code != 354 if stage == "DATA" and not final else code >= 300):
            raise _ProtocolError(f"the server answered {stage} with {code} {text[:40]!r}")
        return code, text

    # -- one message --------------------------------------------------------------------------

    def send(self, envelope: Envelope, message: bytes) -> SendResult:
        """Deliver one message. Raises TransportError only when no session could be opened
        (nothing was sent); every other outcome is a SendResult."""
        if any(c in envelope.mail_from + envelope.rcpt_to for c in "\r\n<>"):
            return SendResult(
                DeliveryStatus.FAILED, "refused here: an address contains a forbidden character"
            )
        if self._wire is None:
            self.open()
        self._begin("the message")
        commands = (
            f"MAIL FROM:<{envelope.mail_from}>\r\n".encode(),
            f"RCPT TO:<{envelope.rcpt_to}>\r\n".encode(),
            b"DATA\r\n",
        )
        self._awaiting = "MAIL"
        after_dot = False
        try:
            replies = []
            if "PIPELINING" in self.extensions:
                self._put(b"".join(commands))
                replies = [self._answer(stage) for stage in _STAGES]
            else:
                for stage, command in zip(_STAGES, commands, strict=True):
                    self._put(command)
                    replies.append(self._answer(stage))
                    if replies[-1][0] >= 400:  # refused (a reply under 400 fits its command)
                        break
            if len(replies) < 3 or replies[0][0] >= 300 or replies[1][0] >= 300 or replies[2][0] != 354:
                return self._first_failure(replies, envelope.rcpt_to)
            self._send_body(message)
            after_dot = True
            assert self._wire is not None
            self._wire.reply_due = time.monotonic() + self.timeout
            code, text = self._answer("DATA", final=True)
            return self._after(classify_reply(code, text, stage="DATA", recipient=envelope.rcpt_to), code)
        except (OSError, _ConnectionLost) as exc:
            self._drop()
            what = self._lost(exc)
            timed_out = isinstance(exc, TimeoutError)
            if after_dot:  # the server may have taken it and lost only its answer (RFC 1047)
                return SendResult(
                    DeliveryStatus.UNKNOWN,
                    f"{what} after the message's final dot: it may be delivered",
                    stage="DATA",
                    timed_out=timed_out,
                )
            ended = "session dropped" if isinstance(exc, _ProtocolError) else "connection lost"
            return SendResult(
                DeliveryStatus.DEFERRED, f"{ended}: {what}", stage=self._awaiting, timed_out=timed_out
            )

    def _lost(self, exc: BaseException) -> str:
        if isinstance(exc, _Overdue):
            return f"{self._step} took more than {self.timeout * STEP_TIMEOUTS:g} seconds"
        if isinstance(exc, TimeoutError):
            return f"no reply within {self.timeout:g} seconds"
        if isinstance(exc, _ConnectionLost):
            return str(exc)
        return f"the connection failed ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)

    def _send_body(self, message: bytes) -> None:
        """The message and its end-of-data line, dot-stuffed only if it needs it (composed ones
        don't). Nothing may have come after the 354: a reply to a message not yet sent."""
        assert self._wire is not None
        self._unasked()
        if message.startswith(b".") or b"\r\n." in message:
            message = (b"." if message.startswith(b".") else b"") + message.replace(b"\r\n.", b"\r\n..")
        self._wire.send_message(message, b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n")

    def _first_failure(self, replies: list[tuple[int, str]], recipient: str) -> SendResult:
        """The fate decided by the first refusal among the replies (every reply is of a kind its
        command can get: a code under 400 is acceptance)."""
        stage, code, text = next((s, c, t) for s, (c, t) in zip(_STAGES, replies, strict=False) if c >= 400)
        result = classify_reply(code, text, stage=stage, recipient=recipient)
        if code == 421:  # the server is closing the channel (RFC 5321 3.8)
            self._drop()
        else:
            self._rset(data_open=len(replies) == 3 and replies[2][0] == 354)
        return result

    def _after(self, result: SendResult, code: int) -> SendResult:
        if code == 421:  # the server is closing the channel (RFC 5321 3.8)
            self._drop()
        return result

    def _rset(self, *, data_open: bool = False) -> None:
        """Back to a clean session after a refusal; a server waiting for a message we will not
        send (`data_open`) gets it empty first. A failure here drops the session, and changes
        nothing of the refusal."""
        try:
            if data_open:
                self._command(b".")
            self._command(b"RSET")
        except (OSError, _ConnectionLost):
            self._drop()

    def _drop(self) -> None:
        if self._wire is not None:
            with contextlib.suppress(OSError):
                self._wire.sock.close()
        self._wire = None

    @property
    def connected(self) -> bool:
        return self._wire is not None

    def close(self) -> None:
        if self._wire is not None:
            self._begin("the session's end")
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

"""Where composed messages go: the outbox folder (the embedded default) or an SMTP server. What a
reply means is `replies`; the session's socket, with its caps and deadlines, is `wire`."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import NamedTuple, Protocol

from ..config import Settings
from ..db.models import DeliveryStatus
from ..errors import ConfigError, TransportError
from ..links import OUTBOX_SUFFIX
from ..private import open_private, private_folder
from .replies import SendResult, classify_reply
from .wire import (
    REPLY_BYTES,
    REPLY_LINE_OCTETS,
    REPLY_LINES,
    ConnectionLost,
    Overdue,
    ProtocolError,
    Wire,
    kernel_timeouts,
)

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


# The session's setup (greeting to the end of AUTH), and each message (MAIL to its final reply),
# must be over within this many [smtp] timeout_seconds, however promptly each reply comes.
STEP_TIMEOUTS = 2


class Envelope(NamedTuple):
    mail_from: str
    rcpt_to: str
    key: str  # names the message in the outbox (links: issue_copy_key, "issue-3/00000042")


class Transport(Protocol):
    def send(self, envelope: Envelope, message: bytes) -> SendResult: ...

    def close(self) -> None: ...


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


_STAGES = ("MAIL", "RCPT", "DATA")


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
        self._wire: Wire | None = None
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
                kernel_timeouts(sock, self.timeout)
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
                    raise ProtocolError("the server sent more after its 220 to STARTTLS")
                self._attach(self._handshake(self._wire.sock))
                self._ehlo()
            if self.username:
                self._login()
        except TransportError:
            self._drop()
            raise
        except (OSError, ConnectionLost) as exc:
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
            raise Overdue
        sock.settimeout(min(self.timeout, left))
        tls = self._context().wrap_socket(sock, server_hostname=self.host)
        tls.settimeout(self.timeout)
        return tls

    def _context(self) -> ssl.SSLContext:
        return self.tls_context or ssl.create_default_context()

    def _attach(self, sock: socket.socket) -> None:
        """Read replies from `sock`; the first (a greeting) is due within the timeout from now."""
        self._wire = Wire(sock, self.timeout, self._step_due)

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
        assert self._wire is not None
        return self._wire.reply()

    def _put(self, data: bytes) -> None:
        assert self._wire is not None
        self._wire.put(data)

    def _command(self, line: bytes) -> tuple[int, str]:
        self._put(line + b"\r\n")
        return self._reply()

    def _answer(self, stage: str, *, final: bool = False) -> tuple[int, str]:
        """The reply to `stage`'s command, or to the message (`final`), which must be of a kind it
        can get: 354 to DATA, 2xx to the others, or a 4xx or 5xx."""
        self._awaiting = stage
        code, text = self._reply()
        if code < 400 and (code != 354 if stage == "DATA" and not final else code >= 300):
            raise ProtocolError(f"the server answered {stage} with {code} {text[:40]!r}")
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
        except (OSError, ConnectionLost) as exc:
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
            ended = "session dropped" if isinstance(exc, ProtocolError) else "connection lost"
            return SendResult(
                DeliveryStatus.DEFERRED, f"{ended}: {what}", stage=self._awaiting, timed_out=timed_out
            )

    def _lost(self, exc: BaseException) -> str:
        if isinstance(exc, Overdue):
            return f"{self._step} took more than {self.timeout * STEP_TIMEOUTS:g} seconds"
        if isinstance(exc, TimeoutError):
            return f"no reply within {self.timeout:g} seconds"
        if isinstance(exc, ConnectionLost):
            return str(exc)
        return f"the connection failed ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)

    def _send_body(self, message: bytes) -> None:
        """The message and its end-of-data line, dot-stuffed only if it needs it (composed ones
        don't). Nothing may have come after the 354: a reply to a message not yet sent."""
        assert self._wire is not None
        self._wire.unasked()
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
        except (OSError, ConnectionLost):
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
            with contextlib.suppress(OSError, ConnectionLost):
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

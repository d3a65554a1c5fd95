"""Where composed messages go: the outbox folder (the embedded default) or an SMTP server."""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from .config import Settings
from .errors import ConfigError, TransportError
from .models import DeliveryStatus

__all__ = [
    "Envelope",
    "SendResult",
    "Transport",
    "OutboxTransport",
    "SmtpTransport",
    "open_transport",
    "classify_reply",
]


class Envelope(NamedTuple):
    mail_from: str
    rcpt_to: str
    key: str  # names the message in the outbox: "issue-3/000042"


@dataclass(frozen=True)
class SendResult:
    status: DeliveryStatus  # SENT, DEFERRED, BOUNCED or FAILED
    reply: str
    throttled: bool = False  # the server asked us to slow down


class Transport(Protocol):
    def send(self, envelope: Envelope, message: bytes) -> SendResult: ...

    def close(self) -> None: ...


_THROTTLE = re.compile(r"rate|too many|try again later|throttl", re.I)


def classify_reply(code: int, text: str, *, stage: str) -> SendResult:
    """The fate of a message from the server's reply and the stage (RCPT or DATA) it came at."""
    reply = f"{code} {text}".strip()
    if 200 <= code < 300:
        return SendResult(DeliveryStatus.SENT, reply)
    throttled = code in (421, 450, 451, 454) and bool(_THROTTLE.search(text)) or code == 421
    if 400 <= code < 500:
        return SendResult(DeliveryStatus.DEFERRED, reply, throttled=throttled)
    if stage == "RCPT":
        return SendResult(DeliveryStatus.BOUNCED, reply)
    return SendResult(DeliveryStatus.FAILED, reply)


class OutboxTransport:
    """One .eml file per message, written whole (temporary file, then rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, envelope: Envelope, message: bytes) -> SendResult:
        path = self.folder / f"{envelope.key}.eml"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".eml.tmp")
        tmp.write_bytes(message)
        os.replace(tmp, path)
        return SendResult(DeliveryStatus.SENT, f"250 written to {path}")

    def close(self) -> None:
        pass


class SmtpTransport:
    """One SMTP session, reused for every message, reopened after a drop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        username: str = "",
        password: str = "",
        timeout: float = 30,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout = username, password, timeout
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        try:
            context = ssl.create_default_context()
            smtp: smtplib.SMTP
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if self.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password)
            return smtp
        except smtplib.SMTPAuthenticationError as exc:
            raise TransportError(
                f"the SMTP server {self.host}:{self.port} refused the login: {_text(exc.smtp_error)}"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise TransportError(
                f"the SMTP server {self.host}:{self.port} does not offer STARTTLS (set [smtp] security)"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportError(
                f"cannot connect to the SMTP server {self.host}:{self.port}: {exc}"
            ) from None

    def send(self, envelope: Envelope, message: bytes) -> SendResult:
        if self._smtp is None:
            self._smtp = self._connect()
        smtp = self._smtp
        try:
            refused = smtp.sendmail(envelope.mail_from, [envelope.rcpt_to], message)
            if refused:
                code, text = next(iter(refused.values()))
                return classify_reply(code, _text(text), stage="RCPT")
            return SendResult(DeliveryStatus.SENT, "250 accepted")
        except smtplib.SMTPRecipientsRefused as exc:  # smtplib has sent RSET already
            code, text = next(iter(exc.recipients.values()))
            return self._after_error(classify_reply(code, _text(text), stage="RCPT"))
        except smtplib.SMTPSenderRefused as exc:
            return self._after_error(classify_reply(exc.smtp_code, _text(exc.smtp_error), stage="MAIL"))
        except smtplib.SMTPDataError as exc:
            return self._after_error(classify_reply(exc.smtp_code, _text(exc.smtp_error), stage="DATA"))
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            return SendResult(DeliveryStatus.DEFERRED, f"connection lost: {exc}")

    def _after_error(self, result: SendResult) -> SendResult:
        if self._smtp is not None and self._smtp.sock is None:  # smtplib closes on 421
            self._smtp = None
        return result

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._drop()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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

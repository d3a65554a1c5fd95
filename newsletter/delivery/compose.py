"""Pure: a rendered issue and one subscriber in, the bytes of one message out.

The message is encoded once per issue. Its text and HTML parts are quoted-printable,
split where the per-subscriber values go; composing a message encodes only those short
values and joins the pieces with soft line breaks (`=` CRLF), which a reader's decoder
removes. So one message costs a few microseconds and never re-renders or re-encodes the
issue. tests/delivery/test_compose.py builds the same message the slow way and compares."""

from __future__ import annotations

import html as htmlmod
import itertools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import dkim

from ..config import Settings, mailbox
from ..content.render import RenderedIssue, greeting_for, render_confirmation
from ..links import Links, feedback_id, list_id
from .signing import DkimSigner, relaxed_chunk

__all__ = [
    "Recipient",
    "MessageTemplate",
    "address_header",
    "confirmation_message",
    "qp_encode",
]

CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"
_QP_LINE = 75  # 76 with the soft break's "="
# One token per byte: printable ASCII stays, "=" and everything else becomes =XX.
_QP_BYTE = [chr(b) if 33 <= b <= 126 and b != 61 or b in (9, 32) else f"={b:02X}" for b in range(256)]


@dataclass(frozen=True)
class Recipient:
    subscriber_id: int
    email: str
    name: str | None
    unsubscribe_token: str


def qp_encode(text: str) -> bytes:
    """Quoted-printable (RFC 2045) with CRLF line ends and lines of at most 76 characters."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        tokens = [_QP_BYTE[b] for b in line.encode("utf-8")]
        if tokens and tokens[-1] in (" ", "\t"):  # trailing white space would be lost in transit
            tokens[-1] = f"={ord(tokens[-1]):02X}"
        if tokens and tokens[0] == ".":  # no line starts with a dot: no dot-stuffing per message
            tokens[0] = "=2E"
        current = ""
        for tok in tokens:
            if len(current) + len(tok) > _QP_LINE:
                out.append(current + "=")
                current = "=2E" if tok == "." else ""
                if current:
                    continue
            current += tok
        out.append(current)
    return "\r\n".join(out).encode("ascii")


def _qp_value(text: str) -> bytes:
    """A per-subscriber value: most (a URL, a plain greeting) are their own encoding."""
    if (
        len(text) <= _QP_LINE
        and text.isascii()
        and text.isprintable()
        and "=" not in text
        and text[-1:] != " "
        and text[:1] != "."
    ):
        return text.encode("ascii")
    return qp_encode(text)


class _Part:
    """One body part's quoted-printable pieces: fixed bytes, and slots for the per-subscriber values.

    Every join is a soft line break, so each piece starts a line: a piece's DKIM-canonical form
    (relaxed, line by line) is computed once here, and a message's body hash needs only its values'."""

    def __init__(self, source: str, placeholder: re.Pattern[str]) -> None:
        self.pieces: list[bytes | str] = []
        if not source.endswith("\n"):
            source += "\n"  # a part ends with a line break, as the standard library writes it
        for i, chunk in enumerate(placeholder.split(source)):
            if i % 2:
                self.pieces.append(chunk)  # a placeholder name
            elif chunk:
                self.pieces.append(qp_encode(chunk))
        self.canonical = [p if isinstance(p, str) else relaxed_chunk(p) for p in self.pieces]

    def encode(self, values: dict[str, bytes]) -> list[bytes]:
        return self._join(self.pieces, values)

    def encode_canonical(self, values: dict[str, bytes]) -> list[bytes]:
        return self._join(self.canonical, {k: relaxed_chunk(v) for k, v in values.items()})

    @staticmethod
    def _join(pieces: list[bytes | str], values: dict[str, bytes]) -> list[bytes]:
        out: list[bytes] = []
        for piece in pieces:
            if out:
                out.append(SOFT_BREAK)
            out.append(values[piece] if isinstance(piece, str) else piece)
        return out


class MessageTemplate:
    """An issue encoded once; `compose` makes one subscriber's message from it."""

    def __init__(
        self,
        issue: RenderedIssue,
        *,
        issue_id: int,
        newsletter_name: str,
        sender: Address,
        reply_to: Address | None,
        base_url: str,
        subject_prefix: str = "",
        extra_headers: tuple[tuple[str, str], ...] = (),
        signer: DkimSigner | None = None,
        preferences_token: Callable[[int], str] | None = None,
    ) -> None:
        self.issue_id = issue_id
        self.links = Links(base_url)
        self.preferences_token = preferences_token  # subscriber id -> token; None: the site's page
        self.domain = sender.domain or "localhost"
        self.boundary = f"=_nl_{secrets.token_hex(12)}"
        self.signer = signer
        fold = _fold
        list_header = list_id(newsletter_name, base_url)
        fixed = [
            address_header("From", sender),
            *([address_header("Reply-To", reply_to)] if reply_to else []),
            fold("Subject", subject_prefix + issue.subject),
            fold("List-Id", list_header),
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            fold("List-Help", f"<{self.links.signup()}>"),
            fold("List-Archive", f"<{self.links.archive()}>"),
            fold("Feedback-ID", feedback_id(issue_id, list_header, self.domain)),
            "Precedence: bulk\r\n",
            "Auto-Submitted: auto-generated\r\n",
            *(fold(k, v) for k, v in extra_headers),
            "MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"\r\n',
        ]
        self._fixed_headers = "".join(fixed).encode("ascii")
        part_head = (
            'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        )
        delimiter = f"\r\n--{self.boundary}\r\n".encode("ascii")
        self._text_head = f"--{self.boundary}\r\n".encode("ascii") + part_head.format("plain").encode("ascii")
        self._html_head = delimiter + part_head.format("html").encode("ascii")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self._canonical_heads = [relaxed_chunk(x) for x in (self._text_head, self._html_head, self._tail)]
        # only this issue's own placeholder names: text that merely looks like one stays text
        names = issue.placeholders
        self._greeting, self._unsubscribe_url = names.greeting, names.unsubscribe_url
        self._preferences_url = names.preferences_url
        spliced = (names.greeting, names.unsubscribe_url, names.preferences_url)
        placeholder = re.compile("(" + "|".join(map(re.escape, spliced)) + ")")
        self._text = _Part(issue.text, placeholder)
        self._html = _Part(issue.html, placeholder)
        self._id_prefix = secrets.token_hex(4)  # with the counter: unique without urandom per message
        self._counter = itertools.count(1)
        self._date_second = -1
        self._date_header = b""

    def preferences_url(self, subscriber_id: int) -> str:
        if self.preferences_token is None:
            return self.links.signup()
        return self.links.preferences(self.preferences_token(subscriber_id))

    def compose(self, recipient: Recipient) -> bytes:
        url = self.links.unsubscribe(recipient.unsubscribe_token)
        greeting = greeting_for(_one_line(recipient.name))
        greeting_name, url_name, choose_name = self._greeting, self._unsubscribe_url, self._preferences_url
        text_values = {greeting_name: _qp_value(greeting)}
        html_values = {greeting_name: _qp_value(htmlmod.escape(greeting))}
        for name, value in ((url_name, url), (choose_name, self.preferences_url(recipient.subscriber_id))):
            text_values[name] = _qp_value(value)
            html_values[name] = text_values[name] if "&" not in value else _qp_value(htmlmod.escape(value))
        unique = f"{self._id_prefix}{next(self._counter)}"
        message_id = f"<{self.issue_id}.{recipient.subscriber_id}.{unique}@{self.domain}>"
        head = (
            self._date()
            + f"Message-ID: {message_id}\r\n".encode("ascii")
            + address_header("To", mailbox(_one_line(recipient.name), recipient.email)).encode("ascii")
            + f"List-Unsubscribe: <{url}>\r\n".encode("ascii")
            + self._fixed_headers
            + CRLF
        )
        body = [
            self._text_head,
            *self._text.encode(text_values),
            self._html_head,
            *self._html.encode(html_values),
            self._tail,
        ]
        if self.signer is None:
            return b"".join([head, *body])
        text_head, html_head, tail = self._canonical_heads
        body_hash = self.signer.body_hash(
            [
                text_head,
                *self._text.encode_canonical(text_values),
                html_head,
                *self._html.encode_canonical(html_values),
                tail,
            ]
        )
        signature = self.signer.header(dkim.rfc822_parse(head)[0], body_hash)
        return b"".join([signature, head, *body])

    def _date(self) -> bytes:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            when = datetime.fromtimestamp(second, tz=UTC)
            self._date_header = f"Date: {format_datetime(when)}\r\n".encode("ascii")
        return self._date_header


def _one_line(name: str | None) -> str | None:
    if not name:
        return None
    return " ".join(name.split()) or None


def address_header(field: str, address: Address) -> str:
    """One address header line from an Address object: the standard library quotes a display name
    or RFC 2047-encodes it, and folds. Never text decoded and parsed again, where an encoded name
    such as 'Zoë \\" , evil@x.example' would turn into a second address."""
    text = str(address)  # a display name with specials comes back quoted
    if text.isascii() and len(field) + len(text) < 76:
        return f"{field}: {text}\r\n"
    return str(policy.SMTP.header_factory(field, address).fold(policy=policy.SMTP))


def _fold(name: str, value: str) -> str:
    """One header line, RFC 2047-encoded and folded by the standard library."""
    return str(policy.SMTP.header_factory(name, value).fold(policy=policy.SMTP))


def confirmation_message(
    settings: Settings,
    *,
    to_email: str,
    to_name: str | None,
    confirm_url: str,
    signer: DkimSigner | None = None,
) -> bytes:
    """The double opt-in mail, built by the standard library (one per signup, no need to splice)."""
    subject, html, text = render_confirmation(settings, confirm_url=confirm_url)
    return one_off_message(settings, (subject, html, text), to_email=to_email, to_name=to_name, signer=signer)


def one_off_message(
    settings: Settings,
    rendered: tuple[str, str, str],
    *,
    to_email: str,
    to_name: str | None,
    signer: DkimSigner | None = None,
) -> bytes:
    """A mail to one reader, not an issue (a confirmation, a reminder, a welcome): (subject, HTML,
    text) as rendered, built by the standard library."""
    subject, html, text = rendered
    n = settings.newsletter
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = n.sender_mailbox
    msg["To"] = mailbox(_one_line(to_name), to_email)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=n.sender_mailbox.domain or None)
    msg["Auto-Submitted"] = "auto-generated"
    if n.reply_to_mailbox:
        msg["Reply-To"] = n.reply_to_mailbox
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    data = msg.as_bytes()
    return signer.sign(data) if signer else data

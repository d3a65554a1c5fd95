"""Classifying one mail from the bounce mailbox.

Each mail is classified: an ARF feedback report (RFC 5965) is a complaint; a DSN (RFC 3464) or a
non-standard bounce (flufl.bounce's detectors) is a hard bounce (5.x.x) or a soft one (4.x.x, a
delivery given up); a delay warning and an auto-reply (RFC 3834 Auto-Submitted, vacation
messages) change nothing.

Anybody can mail the bounce address, so a mail changes a subscriber only when something the
newsletter signed names them. A bounce is a failed delivery, so it comes back to the VERP address
of the mail that failed: it is attributed only by the address it was delivered to, as the
receiving side records it at the top of the mail (Delivered-To, X-Original-To, Envelope-To), never
by a To: its sender wrote nor by a VERP address in the returned copy. A copy carries that address
in its Return-Path only once it was delivered, and a reader may pass such a copy on, so a bounce
that wraps one without coming back to its address is kept for review. A feedback loop sends its
complaints to one fixed address, with the reported copy inside, so a complaint may also be
attributed by the VERP address in the copy (its Return-Path, the report's Original-Mail-From).
Whether that address is recent enough to be believed is the policy's (bounces.policy).

Else the unsubscribe token in the returned original's List-Unsubscribe names the reader. That
link is in every copy a reader can pass on, so a report it alone attributes names no issue and
may at most unsubscribe the reader (policy). A report that only names an address is kept for the
operator to review (the console lists it) and changes nobody.

One report gives at most one event per reader: a DSN's recipient blocks (RFC 3464) say who failed
and how, an alias's Original-Recipient and Final-Recipient being one recipient; a report that a
signed token attributes is about that one reader, however many addresses it lists."""

from __future__ import annotations

import dataclasses
import email
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses

from flufl.bounce import all_failures

from ..db import widths
from ..db.models import BounceKind, MailKind, SignedBy
from ..delivery.tokens import BadToken, Tokens, verp_token
from ..links import Links
from .records import FoundEvent

__all__ = ["BOUNCE_READ_LIMIT", "BOUNCE_READ_LINES", "Classified", "classify", "printable"]

# What of a mail is read: a DSN or ARF needs its first parts and the returned headers (a whole
# returned digest is about 40 KB in 600 lines); flufl.bounce's heuristics cost about 150 µs a line
# (50 patterns each), up to 10 s for a MB of short lines.
BOUNCE_READ_LIMIT = 128 * 1024
BOUNCE_READ_LINES = 2000

# Where the receiving side records the envelope address a mail was delivered to (Postfix writes
# X-Original-To and Delivered-To, Dovecot and Gmail Delivered-To, Exim Envelope-to), and the other
# headers it writes with them; they head the mail, above every header its sender wrote.
_DELIVERY_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "x-rcpt-to")
_DELIVERY_TRACE = (*_DELIVERY_HEADERS, "return-path", "delivery-date")
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|vacation|away from|"
    r"abwesenheit|r[eé]ponse automatique|absence)",
    re.I,
)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.I)
_QUOTED_HEADER = re.compile(r"^(List-Unsubscribe|Feedback-ID):[ \t]*(\S[^\r\n]*)\r?$", re.M | re.I)
_DELAYED_ACTION = "delayed"  # a DSN's Action (RFC 3464): the server is still trying
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Classified:
    kind: MailKind
    events: tuple[FoundEvent, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class _Reader:
    """Whom a signed token in the mail names, and which token."""

    issue_id: int | None
    subscriber_id: int
    signed_by: SignedBy


@dataclass(frozen=True)
class _Failure:
    address: str  # the address the mail was sent to, where the report says it
    status: str
    detail: str

    @property
    def kind(self) -> BounceKind:
        return BounceKind.SOFT if self.status.startswith("4") else BounceKind.HARD


def classify(data: bytes, *, tokens: Tokens, return_path: str | None, base_url: str = "") -> Classified:
    head = data[:BOUNCE_READ_LIMIT]
    beyond = head.split(b"\n", BOUNCE_READ_LINES)[BOUNCE_READ_LINES:]  # what follows the last line read
    head = head[: len(head) - len(beyond[0])] if beyond else head
    cut = ""
    if len(head) < len(data):  # the headers and the report's first parts; what follows is the returned copy
        cut = f"read the first {len(head):,} of {len(data):,} bytes"
        data = head
    try:
        msg = email.message_from_bytes(data)
        found = _classify(msg, tokens=tokens, return_path=return_path, base_url=base_url)
    except Exception as exc:  # noqa: BLE001 - a mail that breaks a parser is reported, not fatal
        found = Classified(MailKind.UNRECOGNISED, note=f"unreadable: {type(exc).__name__}: {exc}")
    return dataclasses.replace(found, note="; ".join(filter(None, (found.note, cut)))) if cut else found


def _classify(msg: Message, *, tokens: Tokens, return_path: str | None, base_url: str) -> Classified:
    if not msg.keys() or not (msg.get("from") or msg.get("subject") or msg.get("content-type")):
        return Classified(MailKind.UNRECOGNISED, note="not a mail message (no From, Subject or Content-Type)")
    originals = _embedded_originals(msg)
    # what we signed says whose mail this is; an address alone could be anybody's forgery
    delivered_to = _read_verp(_delivered_to(msg), tokens, return_path)
    in_copy = _read_verp(_copy_verps(msg, originals), tokens, return_path)
    link = _from_unsubscribe_link(originals, tokens, Links(base_url))
    if _is_feedback_report(msg):  # a feedback loop's fixed address, with the reported copy inside
        return _attributed(_complaint(msg, originals, delivered_to or in_copy or link))
    # a bounce comes back to the address of the mail that failed; a delivered copy's Return-Path
    # in a bounce that did not says only that somebody holds that copy
    forwarded = in_copy if delivered_to is None else None
    reader = delivered_to or (link if forwarded is None else None)
    report = msg.get_content_type() == "multipart/report"
    if not report and not _bounce_sender(msg) and _auto_reply(msg):
        return Classified(MailKind.AUTO_REPLY, note=_subject(msg))
    failures, other_actions = _dsn_failures(msg)
    if not failures and not other_actions:  # no DSN: flufl.bounce's detectors read the text
        temporary, permanent = all_failures(msg)
        other_actions = [_DELAYED_ACTION for _ in temporary - permanent]
        failures = [_Failure(a.decode("ascii", "replace").lower(), "", "") for a in sorted(permanent)]
    if any(not f.status for f in failures):  # the report's text may say what its blocks do not
        said = _status_in(_first_line(msg))
        failures = [f if f.status else dataclasses.replace(f, status=said) for f in failures]
    if not failures and not other_actions:
        if _auto_reply(msg):
            return Classified(MailKind.AUTO_REPLY, note=_subject(msg))
        if reader is not None and _bounce_sender(msg):
            # from a mail server to one delivery's own address, in a shape no detector knows
            return Classified(
                MailKind.BOUNCE,
                (_event(BounceKind.SOFT, "", reader, "", _first_line(msg)),),
                "unparsed bounce",
            )
        return Classified(MailKind.UNRECOGNISED, note=f"neither a bounce nor a report: {_subject(msg)!r}")
    if not failures:  # a warning (the server is still trying), or a notice that it delivered
        delayed = _DELAYED_ACTION in other_actions
        return Classified(MailKind.DELAYED if delayed else MailKind.DELIVERED, note=_subject(msg))
    if reader is not None:  # one reader, one event: the worst of what the report says
        worst = min(failures, key=lambda f: f.kind != BounceKind.HARD)
        return Classified(
            MailKind.BOUNCE, (_event(worst.kind, worst.address, reader, worst.status, worst.detail),)
        )
    by_address: dict[str, _Failure] = {}
    for f in failures:  # a reader listed twice is one event, the worst
        if f.address not in by_address or (
            f.kind == BounceKind.HARD and by_address[f.address].kind == BounceKind.SOFT
        ):
            by_address[f.address] = f
    events = (_event(f.kind, a, None, f.status, f.detail) for a, f in sorted(by_address.items()))
    found = Classified(MailKind.BOUNCE, tuple(events))
    if forwarded is not None:
        return dataclasses.replace(
            found,
            kind=MailKind.REVIEW,
            note=f"the returned copy is subscriber {forwarded.subscriber_id}'s delivered copy of issue "
            f"{forwarded.issue_id} (its Return-Path is their VERP address), but the bounce did not come "
            "back to that address: a copy anybody holding it can wrap in a report",
        )
    return _attributed(found)


def _attributed(found: Classified) -> Classified:
    """A report whose events name no subscriber by a signed token is kept for review."""
    if all(e.subscriber_id is not None for e in found.events):
        return found
    return dataclasses.replace(
        found, kind=MailKind.REVIEW, note=f"{found.kind} not attributed by a VERP address or a signed link"
    )


def _complaint(msg: Message, originals: list[Message], reader: _Reader | None) -> Classified:
    fields = _feedback_fields(msg)
    address = ""
    for name in ("original-rcpt-to", "removal-recipient"):
        if fields.get(name):
            address = getaddresses([fields[name]])[0][1].lower()
            break
    if not address:
        for original in originals:
            found = getaddresses([str(original.get("to", ""))])
            if found and found[0][1]:
                address = found[0][1].lower()
                break
    event = _event(BounceKind.COMPLAINT, address, reader, "", fields.get("feedback-type", "abuse"))
    return Classified(
        MailKind.COMPLAINT, (event,), f"feedback report from {fields.get('reporting-mta', '?')}"
    )


def _event(kind: BounceKind, address: str, reader: _Reader | None, status: str, detail: str) -> FoundEvent:
    return FoundEvent(
        kind=kind,
        address=printable(address)[: widths.EMAIL],
        subscriber_id=reader.subscriber_id if reader else None,
        issue_id=reader.issue_id if reader else None,
        status=status,
        detail=" ".join(printable(detail).split())[: widths.DETAIL],
        signed_by=reader.signed_by if reader else SignedBy.NOTHING,
    )


def printable(text: str) -> str:
    """Text from a stranger's mail as it can be stored anywhere (PostgreSQL refuses NUL)."""
    return "".join(c if c.isprintable() else " " for c in text)


def _delivered_to(msg: Message) -> list[str]:
    """The envelope addresses the receiving side recorded when it delivered the mail: the delivery
    headers among those that head it, above the first header of any other kind (the first
    Received: or the sender's own), where no sender can write."""
    found: list[str] = []
    for name, value in msg.items():
        if name.lower() not in _DELIVERY_TRACE:
            break
        if name.lower() in _DELIVERY_HEADERS:
            found.append(str(value))
    return found


def _copy_verps(msg: Message, originals: list[Message]) -> list[str]:
    """The envelope sender a report says the reported mail had: the copy's Return-Path (written
    where it was delivered) and an ARF report's Original-Mail-From."""
    values = [str(v) for o in originals for v in o.get_all("return-path", [])]
    return [*values, _feedback_fields(msg).get("original-mail-from", "")]


def _read_verp(values: list[str], tokens: Tokens, return_path: str | None) -> _Reader | None:
    """The reader whose signed VERP address is among `values`, if any."""
    if not return_path:
        return None
    for _, address in getaddresses(values):
        token = verp_token(address, return_path)
        if token:
            try:
                return _Reader(*tokens.read_bounce(token), signed_by=SignedBy.VERP)
            except BadToken:
                continue  # forged or garbled: the mail is judged by what else it says
    return None


def _from_unsubscribe_link(originals: list[Message], tokens: Tokens, links: Links) -> _Reader | None:
    """The subscriber of the original's signed List-Unsubscribe link. It names no issue: the copy's
    Feedback-ID is not signed, and the link is in every copy a reader forwards."""
    for original in originals:
        for url in re.findall(r"<([^>]+)>", str(original.get("list-unsubscribe", ""))):
            token = links.unsubscribe_token(url)
            if token is None:
                continue
            try:
                subscriber_id = tokens.read_unsubscribe(token)
            except BadToken:
                continue
            return _Reader(None, subscriber_id, signed_by=SignedBy.LINK)
    return None


def _text_of(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            return _decoded(part)
    return ""


def _decoded(part: Message) -> str:
    raw = part.get_payload(decode=True)
    return raw.decode(part.get_content_charset() or "utf-8", "replace") if isinstance(raw, bytes) else ""


def _embedded_originals(msg: Message) -> list[Message]:
    """The returned original's headers: message/rfc822 parts and text/rfc822-headers parts."""
    found: list[Message] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                found.append(payload[0])
        elif ctype == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                found.append(email.message_from_bytes(raw))
        elif ctype == "text/plain" and not found:
            # a non-standard bounce (Exim, qmail) quotes the returned copy in its text
            quoted = _QUOTED_HEADER.findall(_decoded(part))
            if any(name.lower() == "list-unsubscribe" for name, _ in quoted):
                copy = Message()
                for name, value in quoted:
                    copy[name] = value.strip()
                found.append(copy)
    return found


def _is_feedback_report(msg: Message) -> bool:
    report_type = str(msg.get_param("report-type", ""))
    if msg.get_content_type() == "multipart/report" and report_type.lower() == "feedback-report":
        return True
    return any(p.get_content_type() == "message/feedback-report" for p in msg.walk())


def _feedback_fields(msg: Message) -> dict[str, str]:
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):  # the parser reads it as header blocks, like a DSN
            return {
                k.lower(): str(v) for block in payload if isinstance(block, Message) for k, v in block.items()
            }
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
        return {k.lower(): str(v) for k, v in email.message_from_string(text).items()}
    return {}


def _dsn_failures(msg: Message) -> tuple[list[_Failure], list[str]]:
    """From the message/delivery-status parts: the recipients that failed, and the actions of
    those that did not (delayed: still being tried; delivered, relayed or expanded). One block is
    one recipient: its Original-Recipient (the address we sent to, before an alias or a forward
    rewrote it), else its Final-Recipient."""
    failures: list[_Failure] = []
    other_actions: list[str] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        for block in part.get_payload():
            assert isinstance(block, Message)
            address = _recipient(block, "original-recipient") or _recipient(block, "final-recipient")
            if not address:
                continue
            action = str(block.get("action", "")).strip().lower()
            if action and not action.startswith("failed"):
                other_actions.append(action.split()[0])
                continue
            code = str(block.get("diagnostic-code", ""))
            detail = code.partition(";")[2].strip() or code
            status = _status_in(str(block.get("status", ""))) or _status_in(detail)
            failures.append(_Failure(address, status, detail))
    return failures, other_actions


def _recipient(block: Message, field: str) -> str:
    value = str(block.get(field) or "")
    return value.partition(";")[2].strip().strip("<>").lower() if ";" in value else ""


def _status_in(text: str) -> str:
    m = _STATUS.search(text)
    return m.group(0) if m else ""


def _auto_reply(msg: Message) -> bool:
    auto = str(msg.get("auto-submitted", "no")).strip().lower()
    precedence = str(msg.get("precedence", "")).strip().lower()
    return (
        not auto.startswith("no")
        or any(msg.get(h) for h in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"))
        or precedence == "auto_reply"
        or bool(_AUTO_SUBJECT.search(_subject(msg)))
    )


def _bounce_sender(msg: Message) -> bool:
    return (
        bool(_BOUNCE_SENDER.search(str(msg.get("from", ""))))
        or str(msg.get("return-path", "")).strip() == "<>"
    )


def _subject(msg: Message) -> str:
    return " ".join(str(msg.get("subject", "")).split())[:200]


def _first_line(msg: Message) -> str:
    """The first text of a mail, where a non-standard bounce gives its reason."""
    return " ".join(_text_of(msg).split())[: widths.DETAIL]

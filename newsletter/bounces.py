"""`newsletter bounces`: read the bounce mailbox and act on what it holds.

Each mail is classified: an ARF feedback report (RFC 5965) is a complaint; a DSN (RFC 3464) or a
non-standard bounce (flufl.bounce's detectors) is a hard bounce (5.x.x) or a soft one (4.x.x, a
delivery given up); a delay warning and an auto-reply (RFC 3834 Auto-Submitted, vacation
messages) change nothing.

Anybody can mail the bounce address, so a mail changes a subscriber only when something the
newsletter signed names them: the VERP token of the address the mail came back to (it names issue
and subscriber, whatever the remote server wrote), else the unsubscribe token in the returned
original's List-Unsubscribe. A report that only names an address is kept for the operator to
review (the console lists it) and changes nobody.

Every mail read is recorded by its digest, in the same transaction as what it changed, so a
re-run counts nothing twice. Each mail is handled on its own: one that cannot be read, understood
or stored is recorded and reported once, and the others are still read. Nothing is deleted from
the mailbox."""

from __future__ import annotations

import dataclasses
import email
import hashlib
import imaplib
import mailbox
import os
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from email.utils import getaddresses
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from flufl.bounce import all_failures

from .config import Settings, read_secret_key
from .db.models import LIVE_STATUSES, SubscriberStatus
from .delivery.tokens import BadToken, Tokens, verp_token
from .errors import ConfigError, NewsletterError
from .store import FoundEvent, MailOutcome, Store

__all__ = [
    "BouncePolicy",
    "BounceReport",
    "Classified",
    "MailItem",
    "Verdict",
    "classify",
    "process_bounces",
    "read_mailbox",
]

BOUNCE_PASSWORD_ENV = "NEWSLETTER_BOUNCE_PASSWORD"

# Where a mail says which address it came back to: the VERP address, when the server keeps it.
_RECIPIENT_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "x-rcpt-to")
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|vacation|away from|"
    r"abwesenheit|r[eé]ponse automatique|absence)",
    re.I,
)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.I)
_QUOTED_HEADER = re.compile(r"^(List-Unsubscribe|Feedback-ID):[ \t]*(\S[^\r\n]*)\r?$", re.M | re.I)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class MailItem:
    source: str  # where it is in the mailbox, for the record and the report
    data: bytes


@dataclass(frozen=True)
class Classified:
    kind: str  # bounce, complaint, review, delayed, auto_reply, unrecognised
    events: tuple[FoundEvent, ...] = ()
    note: str = ""


@dataclass
class BounceReport:
    read: int = 0
    already_read: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # one line per subscriber changed or counted
    unrecognised: list[str] = field(default_factory=list)  # source: why

    def count(self, kind: str) -> None:
        self.read += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def as_json(self) -> dict[str, object]:
        return {
            "read": self.read,
            "already_read": self.already_read,
            "kinds": self.kinds,
            "changes": self.changes,
            "unrecognised": self.unrecognised,
        }


# -- classification (pure, apart from the token check) --------------------------------------------


def classify(data: bytes, *, tokens: Tokens, return_path: str | None, base_url: str = "") -> Classified:
    try:
        msg = email.message_from_bytes(data)
        return _classify(msg, tokens=tokens, return_path=return_path, base_url=base_url)
    except Exception as exc:  # noqa: BLE001 - a mail that breaks a parser is reported, not fatal
        return Classified("unrecognised", note=f"unreadable: {type(exc).__name__}: {exc}")


def _classify(msg: Message, *, tokens: Tokens, return_path: str | None, base_url: str) -> Classified:
    if not msg.keys() or not (msg.get("from") or msg.get("subject") or msg.get("content-type")):
        return Classified("unrecognised", note="not a mail message (no From, Subject or Content-Type)")
    originals = _embedded_originals(msg)
    # what we signed says whose mail this is; an address alone could be anybody's forgery
    ids = _verp(msg, originals, tokens, return_path) or _from_unsubscribe_link(originals, tokens, base_url)
    if _is_feedback_report(msg):
        return _attributed(_complaint(msg, originals, ids))
    report = msg.get_content_type() == "multipart/report"
    if not report and not _bounce_sender(msg) and _auto_reply(msg):
        return Classified("auto_reply", note=_subject(msg))
    details = _dsn_details(msg)
    temporary, permanent = all_failures(msg)
    addresses = {a.decode("ascii", "replace").lower() for a in (*permanent, *temporary)}
    addresses |= set(details)
    if not addresses:
        if _auto_reply(msg):
            return Classified("auto_reply", note=_subject(msg))
        if ids is not None and _bounce_sender(msg):
            # from a mail server to one delivery's own address, in a shape no detector knows
            return Classified("bounce", (_event("soft", "", ids, "", _first_line(msg)),), "unparsed bounce")
        return Classified("unrecognised", note=f"neither a bounce nor a report: {_subject(msg)!r}")
    events = []
    for address in sorted(addresses):
        action, status, diagnostic = details.get(address, ("", "", ""))
        if action.startswith("delayed") or (not action and address.encode() in temporary - permanent):
            continue  # a warning: the server is still trying
        status = status or _status_in(diagnostic) or _status_in(_first_line(msg))
        kind = "soft" if status.startswith("4") else "hard"
        events.append(_event(kind, address, ids, status, diagnostic))
    if not events:
        return Classified("delayed", note=_subject(msg))
    return _attributed(Classified("bounce", tuple(events)))


def _attributed(found: Classified) -> Classified:
    """A report whose events name no subscriber by a signed token is kept for review."""
    if all(e.subscriber_id is not None for e in found.events):
        return found
    return dataclasses.replace(
        found, kind="review", note=f"{found.kind} not attributed by a VERP address or a signed link"
    )


def _complaint(msg: Message, originals: list[Message], ids: tuple[int | None, int] | None) -> Classified:
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
    event = _event("complaint", address, ids, "", fields.get("feedback-type", "abuse"))
    return Classified("complaint", (event,), f"feedback report from {fields.get('reporting-mta', '?')}")


def _event(
    kind: str, address: str, ids: tuple[int | None, int] | None, status: str, detail: str
) -> FoundEvent:
    issue_id, subscriber_id = ids if ids else (None, None)
    return FoundEvent(
        kind=kind,
        address=_printable(address)[:320],
        subscriber_id=subscriber_id,
        issue_id=issue_id,
        status=status,
        detail=" ".join(_printable(detail).split())[:500],
    )


def _printable(text: str) -> str:
    """Text from a stranger's mail as it can be stored anywhere (PostgreSQL refuses NUL)."""
    return "".join(c if c.isprintable() else " " for c in text)


def _verp(
    msg: Message, originals: list[Message], tokens: Tokens, return_path: str | None
) -> tuple[int, int] | None:
    if not return_path:
        return None
    values = [str(v) for h in _RECIPIENT_HEADERS for v in msg.get_all(h, [])]
    values += [str(v) for o in originals for v in o.get_all("return-path", [])]
    values.append(_feedback_fields(msg).get("original-mail-from", ""))  # an ARF report names it
    for _, address in getaddresses(values):
        token = verp_token(address, return_path)
        if token:
            try:
                return tokens.read_bounce(token)
            except BadToken:
                continue  # forged or garbled: the mail is judged by what else it says
    return None


def _from_unsubscribe_link(
    originals: list[Message], tokens: Tokens, base_url: str
) -> tuple[int | None, int] | None:
    """(issue, subscriber) from the original's signed List-Unsubscribe link and its Feedback-ID."""
    for original in originals:
        for url in re.findall(r"<([^>]+)>", str(original.get("list-unsubscribe", ""))):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or "/unsubscribe/" not in parts.path:
                continue
            if base_url and not url.startswith(base_url.rstrip("/") + "/"):
                continue
            try:
                subscriber_id = tokens.read_unsubscribe(unquote(parts.path.rsplit("/", 1)[1]))
            except BadToken:
                continue
            return _campaign(str(original.get("feedback-id", ""))), subscriber_id
    return None


def _campaign(feedback_id: str) -> int | None:
    """The issue named by a Feedback-ID ("ISSUE:list:type:sender"), if it looks like one of ours."""
    campaign = feedback_id.split(":", 1)[0].strip()
    return int(campaign) if campaign.isdigit() and len(campaign) <= 12 else None


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


def _dsn_details(msg: Message) -> dict[str, tuple[str, str, str]]:
    """address -> (action, status, diagnostic) from the message/delivery-status parts."""
    found: dict[str, tuple[str, str, str]] = {}
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        for block in part.get_payload():
            assert isinstance(block, Message)
            recipient = str(block.get("final-recipient") or block.get("original-recipient") or "")
            address = recipient.partition(";")[2].strip().strip("<>").lower() if ";" in recipient else ""
            if not address:
                continue
            found[address] = (
                str(block.get("action", "")).strip().lower(),
                _status_in(str(block.get("status", ""))),
                str(block.get("diagnostic-code", "")).partition(";")[2].strip()
                or str(block.get("diagnostic-code", "")),
            )
    return found


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
    return " ".join(_text_of(msg).split())[:500]


# -- mailboxes -------------------------------------------------------------------------------------


def read_mailbox(spec: str, settings: Settings, *, skip: Callable[[str], bool]) -> Iterator[MailItem]:
    """Every mail in `[bounces] mailbox`: "maildir:PATH", "mbox:PATH" or "imaps://user@host:993/INBOX".
    `skip(source)` says a mail was read before (IMAP then does not fetch it again)."""
    kind, _, rest = spec.partition(":")
    if kind in ("maildir", "mbox"):
        path = settings.path(rest)
        if not path.exists():
            raise NewsletterError(f"the bounce mailbox {path} does not exist ([bounces] mailbox = {spec!r})")
        box: mailbox.Mailbox[mailbox.Message] = (
            mailbox.Maildir(path, factory=None, create=False)
            if kind == "maildir"
            else mailbox.mbox(path, create=False)
        )
        try:
            for key in box.iterkeys():
                source = f"{kind}:{key}"
                if skip(source):
                    continue
                with box.get_file(key) as f:
                    yield MailItem(source, f.read())
        finally:
            box.close()
    elif spec.startswith("imaps://"):
        yield from _imap(spec, settings, skip)
    else:
        raise ConfigError(
            f"configuration key 'bounces.mailbox' must start with maildir:, mbox: or imaps:// (got {spec!r})"
        )


def _imap(spec: str, settings: Settings, skip: Callable[[str], bool]) -> Iterator[MailItem]:
    url = urlsplit(spec)
    user, host = unquote(url.username or ""), url.hostname or ""
    folder = unquote(url.path.lstrip("/")) or "INBOX"
    password = os.environ.get(BOUNCE_PASSWORD_ENV, "")
    if not user or not host:
        raise ConfigError(
            f"configuration key 'bounces.mailbox' needs imaps://USER@HOST[:PORT]/FOLDER (got {spec!r})"
        )
    context = ssl.create_default_context()  # the system's CAs; SSL_CERT_FILE names another bundle
    try:
        conn = imaplib.IMAP4_SSL(
            host, url.port or 993, ssl_context=context, timeout=settings.smtp.timeout_seconds
        )
    except (OSError, imaplib.IMAP4.error) as exc:
        raise NewsletterError(f"cannot reach the bounce mailbox at {host}:{url.port or 993}: {exc}") from None
    try:
        try:
            conn.login(user, password)
        except imaplib.IMAP4.error as exc:
            raise NewsletterError(
                f"the bounce mailbox refused the login of {user} "
                f"(password from ${BOUNCE_PASSWORD_ENV}): {exc}"
            ) from None
        status, data = conn.select(_quote(folder), readonly=True)  # read-only: nothing is flagged or deleted
        if status != "OK":
            raise NewsletterError(f"the bounce mailbox has no folder {folder!r}")
        validity = (conn.response("UIDVALIDITY")[1] or [b"0"])[0]
        validity_text = validity.decode() if isinstance(validity, bytes) else str(validity)
        status, data = conn.uid("SEARCH", "ALL")
        uids = data[0].split() if status == "OK" and data and isinstance(data[0], bytes) else []
        for uid in uids:
            source = f"imap:{host}/{folder};uidvalidity={validity_text};uid={uid.decode()}"
            if skip(source):
                continue
            status, fetched = conn.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
            body = next((part[1] for part in fetched if isinstance(part, tuple)), None)
            if status == "OK" and isinstance(body, bytes):
                yield MailItem(source, body)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise NewsletterError(f"the bounce mailbox at {host} failed: {exc}") from None
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _quote(folder: str) -> str:
    return folder if re.fullmatch(r"[\w./-]+", folder) else '"' + folder.replace('"', '\\"') + '"'


# -- the command ------------------------------------------------------------------------------------


class Verdict(NamedTuple):
    """What one bounce or complaint does to the subscriber it names, and the line that says so."""

    status: SubscriberStatus | None  # the subscriber's new status, if it changes
    count_bounce: bool  # one more bounce on their record
    delivery_bounced: bool  # the issue's delivery, `sent`, becomes `bounced`
    line: str


@dataclass(frozen=True)
class BouncePolicy:
    """The one bounce policy of reports read from the mailbox (a 5xx at send time follows it too,
    in the ledger's SQL): a complaint closes the address at once; a hard bounce is counted and
    closes a live address; soft bounces close it at `soft_limit` within `soft_window`. An
    address already closed or gone stays what it is."""

    soft_limit: int
    soft_window: timedelta

    def judge(
        self,
        *,
        kind: str,
        code: str,
        address: str,
        named: bool,
        current: SubscriberStatus | None,
        soft_count: int,
    ) -> Verdict:
        """`current` is None when no subscriber is named (or none by that id); `soft_count` counts
        this soft bounce and those before it within the window."""
        who = f"{kind} {code + ' ' if code else ''}{address or '(no address)'}"
        if current is None:
            why = "no such subscriber" if named else "no signed token names anyone, kept for review"
            return Verdict(None, False, False, f"{who}: {why}; nothing changed")
        live = current in LIVE_STATUSES
        if kind == "complaint":
            if current == SubscriberStatus.COMPLAINED:
                return Verdict(None, False, False, f"{who}: already complained")
            return Verdict(
                SubscriberStatus.COMPLAINED, False, False, f"{who}: now complained, never mailed again"
            )
        if kind == "hard":
            if not live:
                return Verdict(None, True, True, f"{who}: hard bounce counted, already {current}")
            return Verdict(SubscriberStatus.BOUNCED, True, True, f"{who}: now bounced")
        counted = f"{who}: soft bounce {soft_count} of {self.soft_limit} within {self.soft_window.days} days"
        if live and soft_count >= self.soft_limit:
            return Verdict(SubscriberStatus.BOUNCED, True, False, f"{counted}, now bounced")
        return Verdict(None, False, False, counted)


def process_bounces(settings: Settings, store: Store, *, now: datetime) -> BounceReport:
    b = settings.bounces
    if b is None:
        raise ConfigError("there is no [bounces] section in the configuration: add return_path and mailbox")
    tokens = Tokens(read_secret_key(settings))
    report = BounceReport()

    def seen(source: str) -> bool:
        if store.bounce_source_seen(source):
            report.already_read += 1
            return True
        return False

    policy = BouncePolicy(b.soft_bounce_limit, timedelta(days=b.soft_bounce_window_days))

    def handle(item: MailItem, digest: str) -> None:
        if store.bounce_mail_seen(digest):
            report.already_read += 1
            return
        verdict = classify(
            item.data, tokens=tokens, return_path=b.return_path, base_url=settings.newsletter.base_url
        )
        outcome: MailOutcome | None = store.record_bounce_mail(
            digest=digest,
            source=item.source,
            kind=verdict.kind,
            note=verdict.note,
            events=verdict.events,
            now=now,
            policy=policy,
        )
        if outcome is None:  # another run recorded it first
            report.already_read += 1
            return
        report.count(verdict.kind)
        report.changes += outcome.lines
        if verdict.kind == "unrecognised":
            report.unrecognised.append(f"{item.source}: {verdict.note}")

    for item in read_mailbox(b.mailbox, settings, skip=seen):
        digest = hashlib.sha256(item.data).hexdigest()
        try:
            handle(item, digest)
        except Exception as exc:  # noqa: BLE001 - one mail, whatever broke, never stops the others
            note = f"could not be handled: {type(exc).__name__}: {_printable(str(exc))[:300]}"
            try:  # recorded, so it is reported once and never retried on every run
                recorded = store.record_bounce_mail(
                    digest=digest,
                    source=item.source,
                    kind="unreadable",
                    note=note,
                    events=(),
                    now=now,
                    policy=policy,
                )
            except Exception as again:  # noqa: BLE001 - the database itself fails: said, tried next run
                recorded = None
                note += f"; not recorded either ({type(again).__name__}), tried again next run"
            if recorded is not None:
                report.count("unreadable")
            report.unrecognised.append(f"{item.source}: {note}")
    return report

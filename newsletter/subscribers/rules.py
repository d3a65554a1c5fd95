"""Subscriber addresses and names checked and normalised; CSV import and export."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from ..db.models import Subscriber
from ..errors import NewsletterError
from .records import NewSubscriber
from .repository import SubscriberRepository

__all__ = [
    "InvalidSubscriber",
    "ImportReport",
    "normalise_email",
    "check_name",
    "import_csv",
    "write_csv",
    "EXPORT_FIELDS",
]

MAX_NAME = 100
# Unicode's bidi embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI): they
# reorder the text after them wherever the name is shown ("Ann\u202egnp.exe" reads "Annexe.png")
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
IMPORT_BATCH = 2000
EXPORT_FIELDS = ("email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")


class InvalidSubscriber(NewsletterError):
    """An address or name that cannot be taken."""


def normalise_email(raw: str) -> str:
    """The address as stored: validated (no DNS), IDNA domain, lower case."""
    value = (raw or "").strip()
    if not value:
        raise InvalidSubscriber("the email address is empty")
    if any(c in value for c in "\r\n"):
        raise InvalidSubscriber("the email address contains a line break")
    from email_validator import EmailNotValidError, validate_email  # 30 ms: only when an address is read

    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidSubscriber(f"'{value}' is not a valid email address: {exc}") from None
    return checked.normalized.lower()


def check_name(raw: str | None) -> str | None:
    """A display name: no line breaks or control characters (they could forge headers), no bidi
    controls (they could disguise it), bounded."""
    if raw is None:
        return None
    if "\r" in raw or "\n" in raw:
        raise InvalidSubscriber("the name contains a line break")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise InvalidSubscriber("the name contains a control character")
    if any(c in BIDI_CONTROLS for c in raw):
        raise InvalidSubscriber("the name contains a text-direction control (it could disguise what follows)")
    name = " ".join(raw.split())
    if len(name) > MAX_NAME:
        raise InvalidSubscriber(f"the name is longer than {MAX_NAME} characters")
    return name or None


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    duplicates: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def import_csv(
    path: Path, store: SubscriberRepository, *, now: datetime, batch_size: int = IMPORT_BATCH
) -> ImportReport:
    """Header row with `email` and optional `name`. Bad rows (a line that is not UTF-8 included)
    are reported by line and skipped; good rows are kept, one transaction per batch; an address
    twice in the file is taken once."""
    report = ImportReport()
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise NewsletterError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        lines = _Lines(handle)
        try:
            reader = csv.DictReader(lines)
            header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
            if lines.undecodable:
                raise NewsletterError(f"{path} header row: {lines.undecodable[0][1]}")
            if "email" not in header:
                raise NewsletterError(f"{path} has no 'email' column in its header row")
            email_key, name_key = header["email"], header.get("name")
            seen: set[str] = set()
            pending: list[NewSubscriber] = []
            for row in reader:
                if lines.undecodable:  # the row is one or more lines, one of them not text
                    report.bad.extend(lines.undecodable)
                    lines.undecodable.clear()
                    continue
                try:
                    email = normalise_email(row.get(email_key) or "")
                    name = check_name(row.get(name_key) if name_key else None)
                except InvalidSubscriber as exc:
                    report.bad.append((lines.number, str(exc)))
                    continue
                if email in seen:
                    report.duplicates += 1
                    continue
                seen.add(email)
                pending.append(NewSubscriber(email, name))
                if len(pending) >= batch_size:
                    _flush(store, pending, report, now)
            report.bad.extend(lines.undecodable)
            _flush(store, pending, report, now)
        except csv.Error as exc:
            raise NewsletterError(f"{path} line {lines.number}: {exc}") from None
    return report


class _Lines:
    """A CSV file's lines as text, one by one: a line that is not UTF-8 is noted with its number
    (and given to the csv reader with U+FFFD for its bad bytes, so the rows around it stay whole)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.number = 0  # the lines read so far: after a row, that row's last line
        self.undecodable: list[tuple[int, str]] = []  # not yet reported

    def __iter__(self) -> Iterator[str]:
        for piece in self.handle:  # up to each LF; a lone CR ends a line too, as in text mode
            for raw in piece.splitlines(keepends=True):
                self.number += 1
                if self.number == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.undecodable.append(
                        (
                            self.number,
                            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                            "of the line); save the file as UTF-8",
                        )
                    )
                    yield raw.decode("utf-8", "replace")


def _flush(
    store: SubscriberRepository, pending: list[NewSubscriber], report: ImportReport, now: datetime
) -> None:
    added, existing = store.import_subscribers(pending, now=now)
    report.added += added
    report.existing += existing
    pending.clear()


def write_csv(subscribers: Iterable[Subscriber], out: IO[str], *, header: bool = True) -> int:
    writer = csv.writer(out)
    if header:
        writer.writerow(EXPORT_FIELDS)
    n = 0
    for sub in subscribers:
        writer.writerow([_cell(getattr(sub, f)) for f in EXPORT_FIELDS])
        n += 1
    return n


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    # A cell starting with = + - @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

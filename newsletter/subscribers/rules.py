"""Subscriber addresses and names checked and normalised; CSV import and export."""

from __future__ import annotations

import csv
from collections.abc import Iterable
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
    """A display name: no line breaks or control characters (they could forge headers), bounded."""
    if raw is None:
        return None
    if "\r" in raw or "\n" in raw:
        raise InvalidSubscriber("the name contains a line break")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise InvalidSubscriber("the name contains a control character")
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
    """Header row with `email` and optional `name`. Bad rows are reported by line and skipped;
    good rows are kept, one transaction per batch; an address twice in the file is taken once."""
    report = ImportReport()
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise NewsletterError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
            if "email" not in header:
                raise NewsletterError(f"{path} has no 'email' column in its header row")
            email_key, name_key = header["email"], header.get("name")
            seen: set[str] = set()
            pending: list[NewSubscriber] = []
            for row in reader:
                line = reader.line_num
                try:
                    email = normalise_email(row.get(email_key) or "")
                    name = check_name(row.get(name_key) if name_key else None)
                except InvalidSubscriber as exc:
                    report.bad.append((line, str(exc)))
                    continue
                if email in seen:
                    report.duplicates += 1
                    continue
                seen.add(email)
                pending.append(NewSubscriber(email, name))
                if len(pending) >= batch_size:
                    _flush(store, pending, report, now)
            _flush(store, pending, report, now)
        except UnicodeDecodeError:
            raise NewsletterError(f"{path} is not UTF-8 text (after line {reader.line_num})") from None
        except csv.Error as exc:
            raise NewsletterError(f"{path} line {reader.line_num}: {exc}") from None
    return report


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

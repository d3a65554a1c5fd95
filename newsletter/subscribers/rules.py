"""Subscriber addresses, names and choices checked and normalised; CSV import and export.

`check_preferences` is the one rule for a reader's choices, whoever sends them: the signup form,
the preference page, the command line, a CSV import."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from ..config import Settings
from ..db.models import Frequency, Subscriber
from ..errors import NewsletterError
from .records import DEFAULT_PREFERENCES, NewSubscriber, Preferences
from .repository import SubscriberRepository

__all__ = [
    "Choices",
    "InvalidPreferences",
    "InvalidSubscriber",
    "ImportReport",
    "normalise_email",
    "check_name",
    "check_preferences",
    "choice_counts",
    "chosen_sections",
    "effective_sections",
    "sets_taking",
    "parse_sections",
    "import_csv",
    "write_csv",
    "EXPORT_FIELDS",
]

MAX_NAME = 100
# Unicode's bidi embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI): they
# reorder the text after them wherever the name is shown ("Ann\u202egnp.exe" reads "Annexe.png")
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
IMPORT_BATCH = 2000
EXPORT_FIELDS = (
    "email",
    "name",
    "status",
    "source",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "sections",
    "frequency",
)
SECTION_SEPARATOR = ";"  # between section names in a CSV cell
BLANKS = " \t"  # around a chosen value, forgiven; a line break or a NUL is not


class InvalidSubscriber(NewsletterError):
    """An address or name that cannot be taken."""


class InvalidPreferences(InvalidSubscriber):
    """A choice of sections or frequency that cannot be taken; the message names the value."""


@dataclass(frozen=True)
class Choices:
    """What readers may choose from, as the configuration offers it: its sections in the file's
    order, and whether there is a weekly edition."""

    sections: tuple[str, ...] = ()
    weekly: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Choices:
        return cls(settings.sections, settings.digest.weekly)

    @property
    def offered(self) -> bool:
        """Whether there is anything to choose: two sections or more, or a weekly edition."""
        return len(self.sections) >= 2 or self.weekly

    @property
    def frequencies(self) -> tuple[Frequency, ...]:
        return tuple(Frequency) if self.weekly else (Frequency.DAILY,)


def check_preferences(
    sections: object,
    frequency: object,
    choices: Choices,
    *,
    default_frequency: Frequency = Frequency.DAILY,
) -> Preferences:
    """A reader's choice, checked: `sections` None when none was made (every section), else a
    list of section names, at least one; `frequency` "daily" or "weekly" (weekly only when there is
    a weekly edition), None or "" for `default_frequency`. Choosing every section is stored as ()
    (every section, those added later too). InvalidPreferences names the first bad value."""
    return Preferences(
        _checked_sections(sections, choices), _checked_frequency(frequency, choices, default_frequency)
    )


def _checked_sections(sections: object, choices: Choices) -> tuple[str, ...]:
    if sections is None:
        return ()
    if not isinstance(sections, list | tuple):
        raise InvalidPreferences(f"sections must be a list of section names, not {shown(sections)}")
    chosen: set[str] = set()
    for value in sections:
        if not isinstance(value, str):
            raise InvalidPreferences(f"a section is a name (text), not {shown(value)}")
        chosen.add(_section_named(value, choices))
    if not chosen:
        if not choices.sections:
            return ()  # nothing to choose from: every story reaches every reader
        raise InvalidPreferences("choose at least one section")
    if chosen == set(choices.sections):
        return ()
    return tuple(s for s in choices.sections if s in chosen)


def _section_named(value: str, choices: Choices) -> str:
    name = value.strip(BLANKS)
    if name in choices.sections:
        return name
    folded = [s for s in choices.sections if s.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    if not choices.sections:
        raise InvalidPreferences(f"there is no section {shown(value)}: this newsletter has none to choose")
    raise InvalidPreferences(
        f"there is no section {shown(value)}; the sections are: {', '.join(choices.sections)}"
    )


def _checked_frequency(frequency: object, choices: Choices, default: Frequency) -> Frequency:
    if frequency is None or frequency == "":
        return default if default in choices.frequencies else Frequency.DAILY
    if not isinstance(frequency, str):
        raise InvalidPreferences(f"the frequency is daily or weekly, not {shown(frequency)}")
    value = frequency.strip(BLANKS).lower()
    if value == Frequency.WEEKLY and not choices.weekly:
        raise InvalidPreferences("there is no weekly edition: the frequency can only be daily")
    if value not in (Frequency.DAILY, Frequency.WEEKLY):
        raise InvalidPreferences(f"the frequency is daily or weekly, not {shown(frequency)}")
    return Frequency(value)


def effective_sections(chosen: Iterable[str], choices: Choices) -> tuple[str, ...]:
    """The sections a reader takes now, in the config's order: those chosen that the configuration
    still has; every section when none was chosen, or when none of those chosen is left."""
    kept = set(chosen) & set(choices.sections)
    return tuple(s for s in choices.sections if s in kept) or choices.sections


def chosen_sections(stored: Iterable[str], choices: Choices) -> tuple[str, ...]:
    """A reader's sections as they stand now, in the config's order: () when that is every one."""
    taken = effective_sections(stored, choices)
    return () if taken == choices.sections else taken


def sets_taking(section: str, held: Iterable[tuple[str, ...]], choices: Choices) -> list[tuple[str, ...]]:
    """Of the sets of sections readers hold (`preference_tally`), those whose readers take `section`."""
    return [chosen for chosen in held if section in effective_sections(chosen, choices)]


@dataclass(frozen=True)
class ChoiceCounts:
    """Active readers per section they take and per frequency, in the config's order."""

    sections: dict[str, int]
    frequencies: dict[str, int]


def choice_counts(tally: Iterable[tuple[tuple[str, ...], Frequency, int]], choices: Choices) -> ChoiceCounts:
    """Counts from the tally's rows (sections, frequency, readers): a few rows, never the table."""
    sections = dict.fromkeys(choices.sections, 0)
    frequencies = dict.fromkeys((f.value for f in Frequency), 0)
    for chosen, frequency, n in tally:
        for name in effective_sections(chosen, choices):
            sections[name] += n
        frequencies[frequency.value] += n
    return ChoiceCounts(sections, frequencies)


def parse_sections(cell: str, choices: Choices, separator: str = SECTION_SEPARATOR) -> list[str] | None:
    """Section names from one line of text ("A;B" in a CSV, "A,B" on the command line); None for
    a blank one (no choice: every section). A name that holds the separator itself is read whole:
    pieces are joined back while they make a section's name."""
    if not cell.strip():
        return None
    pieces = cell.split(separator)
    known = {s.casefold() for s in choices.sections}
    names: list[str] = []
    i = 0
    while i < len(pieces):
        end = next(
            (j for j in range(len(pieces), i, -1) if separator.join(pieces[i:j]).strip().casefold() in known),
            i + 1,
        )
        names.append(separator.join(pieces[i:end]))
        i = end
    return [n for n in names if n.strip()]


def shown(value: object, limit: int = 60) -> str:
    """A value from a stranger, quoted for a message: control characters, line breaks and lone
    surrogates escaped (no page, header or log line can be split or broken by it), cut short."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return f"'{escaped}'" if isinstance(value, str) else escaped


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
    path: Path,
    store: SubscriberRepository,
    *,
    now: datetime,
    choices: Choices = Choices(),
    batch_size: int = IMPORT_BATCH,
) -> ImportReport:
    """Header row with `email` and optional `name`, `sections` (names separated by ";", empty for
    every section) and `frequency`. Bad rows (a line that is not UTF-8 included) are reported by
    line and skipped; good rows are kept, one transaction per batch; an address twice in the file
    is taken once."""
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
            sections_key, frequency_key = header.get("sections"), header.get("frequency")
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
                    preferences = (
                        check_preferences(
                            parse_sections(row.get(sections_key) or "", choices) if sections_key else None,
                            row.get(frequency_key) if frequency_key else None,
                            choices,
                        )
                        if sections_key or frequency_key
                        else DEFAULT_PREFERENCES
                    )
                except InvalidSubscriber as exc:
                    report.bad.append((lines.number, str(exc)))
                    continue
                if email in seen:
                    report.duplicates += 1
                    continue
                seen.add(email)
                pending.append(NewSubscriber(email, name, preferences))
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
        writer.writerow([_cell(_exported(sub, f)) for f in EXPORT_FIELDS])
        n += 1
    return n


def _exported(sub: Subscriber, column: str) -> object:
    """A column's value as `import_csv` reads it back (sections: names separated by ";")."""
    value = getattr(sub, column)
    return SECTION_SEPARATOR.join(value) if column == "sections" else value


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    # A cell starting with = + - @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

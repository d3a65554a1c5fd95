"""The column types every table uses: text cleaned to what both databases can store, JSON, state
enums, a reader's section set and UTC datetimes."""

from __future__ import annotations

import enum
import functools
import json
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect

from . import widths

__all__ = ["SectionSet", "StateColumn", "StoredJSON", "StoredString", "StoredText", "UTCDateTime", "storable"]

# What PostgreSQL's text (NUL) or an XML page (the issue goes through lxml) cannot hold: the C0
# controls but tab, LF and CR, and the non-characters U+FFFE and U+FFFF, dropped; a lone surrogate
# (no UTF-8 can carry it) becomes U+FFFD, as the code's other bad bytes do.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|([\ud800-\udfff])")


def storable(text: str) -> str:
    """The one cleaning rule for every text the newsletter stores (the column types below apply
    it, and the send ledger's plain SQL calls it): a server's reply, a feed's field, a bounce's
    diagnostic are kept as far as they can be, never refused by the database."""
    return _UNSTORABLE.sub(lambda m: "\ufffd" if m.group(1) else "", text)


class StoredText(TypeDecorator[str]):
    """TEXT whose every value goes through `storable` on its way in."""

    impl: type[String] = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return storable(value) if isinstance(value, str) else value


class StoredString(StoredText):
    """VARCHAR(n) whose every value goes through `storable` on its way in."""

    impl = String
    cache_ok = True


class StoredJSON(TypeDecorator[Any]):
    """JSON whose every string, in lists and tables at any depth, goes through `storable`."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _stored(value)


def _stored(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list | tuple):
        return [_stored(v) for v in value]
    if isinstance(value, dict):
        return {_stored(k): _stored(v) for k, v in value.items()}
    return value


class StateColumn(TypeDecorator[Any]):
    """A state enum stored as its value in a VARCHAR(16) (no migration, no database enum type),
    read back as the enum member; a value this code does not know is an error, not a string."""

    impl = String(widths.STATE)
    cache_ok = True

    def __init__(self, states: type[enum.StrEnum]) -> None:
        super().__init__()
        self.states = states

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self.states(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.states(value)


class SectionSet(TypeDecorator[tuple[str, ...]]):
    """A reader's chosen sections as one text value: a JSON list, sorted and without repeats, so
    one set has one spelling to compare, group and count by; `[]` is every section. Read back as
    a tuple of names; each name stored through `storable`."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return _spelling(tuple(value)) if value else "[]"  # most readers take all: no JSON made

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[str, ...] | None:
        if value is None:
            return None
        try:
            found = json.loads(value)
        except ValueError:  # a value edited by hand: every section
            return ()
        return tuple(str(v) for v in found) if isinstance(found, list) else ()


@functools.lru_cache(maxsize=1024)
def _spelling(names: tuple[str, ...]) -> str:
    """A set of sections' one stored spelling (an import writes the same few sets again and again)."""
    return json.dumps(sorted({storable(v) for v in names}), ensure_ascii=False, separators=(",", ":"))


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (naive storage) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        when = datetime.fromisoformat(value) if isinstance(value, str) else value
        assert isinstance(when, datetime)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)

"""Operators: the rules `admin add-user` and the console's login share."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.operators import (
    InvalidOperator,
    hash_password,
    password_matches,
    rehash_if_needed,
    set_operator,
)
from newsletter.store import Store

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def test_names_and_passwords_that_may_be_saved(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ops.db'}")
    store.migrate()
    assert set_operator(store, "  ed  ", "a long enough password", now=NOW) is True
    op = store.operator(name="ed")  # saved trimmed
    assert op is not None and password_matches(op.password_hash, "a long enough password")
    assert set_operator(store, "ed", "another long password", now=NOW) is False  # a new password
    again = store.operator(name="ed")
    assert again is not None and again.session_version == op.session_version + 1  # sessions end
    for name in ("", "   ", "x" * 101, "ed\nroot", "ed\x00"):
        with pytest.raises(InvalidOperator, match="1 to 100 printable"):
            set_operator(store, name, "a long enough password", now=NOW)
    with pytest.raises(InvalidOperator, match="at least 10 characters"):
        set_operator(store, "amy", "short", now=NOW)
    assert store.operator(name="amy") is None
    store.close()


def test_a_password_matches_its_own_hash_only() -> None:
    stored = hash_password("correct horse battery")
    assert password_matches(stored, "correct horse battery")
    assert not password_matches(stored, "correct horse battery ")
    assert not password_matches(None, "correct horse battery")  # no such operator
    assert not password_matches("not a hash at all", "correct horse battery")
    assert rehash_if_needed(stored, "correct horse battery") is None  # made with today's parameters

from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.store import Store
from newsletter.subscribers.rules import InvalidSubscriber, check_name, import_csv, normalise_email

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def test_addresses_are_validated_and_normalised() -> None:
    assert normalise_email("  Ada@Example.COM ") == "ada@example.com"
    for bad in ["", "no-at-sign", "a@b", "x@example.com\r\nBcc: evil@example.com", "a b@example.com"]:
        with pytest.raises(InvalidSubscriber):
            normalise_email(bad)


def test_names_with_line_breaks_are_refused() -> None:
    assert check_name("  Ada   Lovelace ") == "Ada Lovelace"
    assert check_name("") is None
    for bad in ["Ada\r\nBcc: x@example.com", "Ada\nX", "A\x00B", "x" * 101]:
        with pytest.raises(InvalidSubscriber):
            check_name(bad)


def test_csv_import_reports_bad_rows_by_line_and_keeps_the_good(sqlite_store: Store, tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text(
        "Email,Name\n"
        "ada@example.com,Ada\n"
        "not-an-address,Bad\n"
        'grace@example.com,"Grace\nHopper"\n'
        "ADA@example.com,Ada again\n"
        "bob@example.com,\n"
        ",nobody\n",
        encoding="utf-8",
    )
    report = import_csv(csv, sqlite_store, now=NOW)
    assert report.added == 2 and report.duplicates == 1
    assert [line for line, _ in report.bad] == [3, 5, 8]  # physical lines; line 4-5 is one quoted row
    assert "not a valid email address" in report.bad[0][1]
    assert "line break" in report.bad[1][1]
    assert {s.email for s in sqlite_store.iter_subscribers()} == {"ada@example.com", "bob@example.com"}


def test_import_of_100000_rows_in_batches(sqlite_store: Store, tmp_path: Path) -> None:
    csv = tmp_path / "big.csv"
    with csv.open("w") as f:
        f.write("email,name\n")
        for i in range(100_000):
            f.write(f"user{i}@example.com,User {i}\n")
        f.write("broken,Row\n")
    report = import_csv(csv, sqlite_store, now=NOW)
    assert report.added == 100_000 and report.bad == [(100_002, report.bad[0][1])]
    assert sqlite_store.subscriber_counts() == {"active": 100_000}

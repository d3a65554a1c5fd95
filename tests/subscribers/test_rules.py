from pathlib import Path

import pytest

from newsletter.errors import NewsletterError
from newsletter.store import Store
from newsletter.subscribers.rules import (
    IMPORT_BATCH,
    InvalidSubscriber,
    check_name,
    import_csv,
    normalise_email,
)

from ..support.deliveries import NOW


def test_addresses_are_validated_and_normalised() -> None:
    assert normalise_email("  Ada@Example.COM ") == "ada@example.com"
    for bad in ["", "no-at-sign", "a@b", "x@example.com\r\nBcc: evil@example.com", "a b@example.com"]:
        with pytest.raises(InvalidSubscriber):
            normalise_email(bad)


def test_names_with_bidi_controls_are_refused_and_joiners_kept() -> None:
    """An embedding, override or isolate reorders what follows it ("Ann\u202egnp.exe" shows as
    "Annexe.png"); a zero-width joiner or a direction mark does not, and names need them."""
    for control in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069":
        with pytest.raises(InvalidSubscriber, match="text-direction control"):
            check_name(f"Ann {control}gnp.exe")
    for kept in [
        "\U0001f469\u200d\U0001f4bb Ada",
        "\u0645\u0631\u064a\u0645\u200f",
        "\u0915\u094d\u200d\u0937",
    ]:
        assert check_name(kept) == kept


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


def test_an_import_of_many_rows_is_taken_in_batches(sqlite_store: Store, tmp_path: Path) -> None:
    """Five batches of IMPORT_BATCH rows and a bad last line, reported by its number (how long
    100,000 readers take to store, `make bench` measures)."""
    rows = 5 * IMPORT_BATCH
    csv = tmp_path / "big.csv"
    with csv.open("w") as f:
        f.write("email,name\n")
        for i in range(rows):
            f.write(f"user{i}@example.com,User {i}\n")
        f.write("broken,Row\n")
    report = import_csv(csv, sqlite_store, now=NOW)
    assert report.added == rows and report.bad == [(rows + 2, report.bad[0][1])]
    assert sqlite_store.subscriber_counts() == {"active": rows}


def test_a_line_that_is_not_utf8_is_reported_by_its_number_and_the_others_are_imported(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """One Latin-1 name (line 3), a Windows-1252 quote inside a quoted two-line row (lines 5-6),
    a UTF-8 BOM, CRLF and lone-CR line ends: those two rows are skipped with their own line
    numbers, every other row is taken."""
    csv = tmp_path / "mixed.csv"
    csv.write_bytes(
        b"\xef\xbb\xbfemail,name\r\n"
        b"ok1@example.com,Good\r\n"
        b"zoe@example.com,Zo\xeb\r\n"
        b"ok2@example.com,Zo\xc3\xab\r"
        b'quote@example.com,"two\r\n'
        b'lines \x93here\x94"\r\n'
        b"ok3@example.com,\n"
        b"ok4@example.com,last"
    )
    report = import_csv(csv, sqlite_store, now=NOW)
    assert report.bad == [
        (3, "not UTF-8 text (byte 0xeb at byte 19 of the line); save the file as UTF-8"),
        (6, "not UTF-8 text (byte 0x93 at byte 7 of the line); save the file as UTF-8"),
    ]
    names = {s.email: s.name for s in sqlite_store.iter_subscribers()}
    assert names == {
        "ok1@example.com": "Good",
        "ok2@example.com": "Zoë",
        "ok3@example.com": None,
        "ok4@example.com": "last",
    }
    assert report.added == 4


def test_a_header_row_that_is_not_utf8_refuses_the_file(sqlite_store: Store, tmp_path: Path) -> None:
    csv = tmp_path / "header.csv"
    csv.write_bytes(b"email,nom d'abonn\xe9\nok@example.com,x\n")
    with pytest.raises(NewsletterError, match=r"header row: not UTF-8 text \(byte 0xe9"):
        import_csv(csv, sqlite_store, now=NOW)
    assert sqlite_store.subscriber_counts() == {}

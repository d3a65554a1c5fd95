"""One error root: every failure the newsletter means is a NewsletterError with its exit code.
A database that cannot be reached or used prints one sentence that names it (never a traceback,
never its password); a bad value on the command line and an operator rule exit 2."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from newsletter.db.models import Operator
from newsletter.delivery.tokens import BadToken, Tokens
from newsletter.errors import ConfigError, DatabaseError, NewsletterError, UsageError
from newsletter.operators import InvalidOperator
from newsletter.store import Store

from .support.helpers import PG_URL, SECRET, free_port, run_cli, write_config


def _one_sentence(stderr: str) -> str:
    """The command's whole complaint: one line, no traceback, not the catch-all's."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr and "NEWSLETTER_DEBUG" not in stderr
    return lines[0]


def test_a_postgresql_server_that_is_not_there_is_named_in_one_sentence(tmp_path: Path) -> None:
    port = free_port()  # nothing listens on it
    url = f"postgresql+psycopg://news:hunter2secret@127.0.0.1:{port}/test?connect_timeout=5"
    config = write_config(tmp_path, database_url=url)
    for command in (["status"], ["init"], ["subscribers", "add", "ann@example.com"]):
        proc = run_cli(config, *command, check=False)
        line = _one_sentence(proc.stderr)
        assert proc.returncode == 1, (command, proc.stderr)
        assert f"the database postgresql://news:***@127.0.0.1:{port}/test could not be used: " in line
        assert "refused" in line.lower() or "failed" in line.lower(), line
        assert "hunter2secret" not in proc.stderr + proc.stdout and "connect_timeout" not in line


def test_a_sqlite_file_in_an_unwritable_place_is_named_in_one_sentence(tmp_path: Path) -> None:
    """Under a regular file (unwritable for root too), and a database path that is a folder."""
    (tmp_path / "a-file").write_text("not a folder")
    under_a_file = tmp_path / "a-file" / "news.db"
    a_folder = tmp_path / "a-folder.db"
    a_folder.mkdir()
    cases = {
        under_a_file: "cannot be created: Not a directory",
        a_folder: "could not be used: unable to open database file",
    }
    for path, said in cases.items():
        config = write_config(tmp_path, database_url=f"sqlite:///{path}")
        for command in ("init", "status"):
            proc = run_cli(config, command, check=False)
            assert proc.returncode == 1
            assert _one_sentence(proc.stderr) == f"error: the database file {path} {said}", proc.stderr
    assert not any(a_folder.iterdir())  # nothing written


def test_a_database_with_no_schema_says_how_to_make_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    proc = run_cli(config, "status", check=False)
    line = _one_sentence(proc.stderr)
    assert proc.returncode == 1 and "no such table: issues" in line and "'newsletter init'" in line


@pytest.mark.postgres
def test_a_postgresql_schema_with_no_tables_says_how_to_make_it(postgres_url: str) -> None:
    import psycopg

    schema = postgres_url.rsplit("%3D", 1)[1] + "_empty"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    store = Store(postgres_url.rsplit("%3D", 1)[0] + f"%3D{schema}")
    try:
        with pytest.raises(DatabaseError, match=r'relation "issues" does not exist.*newsletter init'):
            store.get_issue(1)
    finally:
        store.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_row_already_there_is_still_the_callers_to_catch(sqlite_store: Store) -> None:
    """Only the database's own failures are wrapped: a unique key's refusal reaches the query
    that expects it (a bounce mail recorded twice, an address imported twice)."""
    from datetime import UTC, datetime

    sqlite_store.save_operator("ed", "hash", now=datetime.now(UTC))
    with pytest.raises(IntegrityError), sqlite_store.write() as s:
        s.add(Operator(name="ed", password_hash="x", created_at=datetime.now(UTC)))


def test_every_failure_meant_is_a_newsletter_error_with_its_exit_code() -> None:
    with pytest.raises(BadToken) as caught:
        Tokens(SECRET).read_unsubscribe("forged.token")
    assert isinstance(caught.value, NewsletterError) and caught.value.exit_code == 1
    assert issubclass(DatabaseError, NewsletterError) and DatabaseError.exit_code == 1
    failed = DatabaseError("the database file x.db could not be used: disk I/O error", "disk I/O error")
    assert failed.said == "disk I/O error"
    again = pickle.loads(pickle.dumps(failed))  # as a sender process hands it to its owner
    assert isinstance(again, DatabaseError) and str(again) == str(failed)
    assert UsageError.exit_code == ConfigError.exit_code == InvalidOperator.exit_code == 2
    assert not issubclass(UsageError, ConfigError) and not issubclass(InvalidOperator, ConfigError)


def test_bad_values_on_the_command_line_exit_2_in_one_sentence(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_cli(config, "init")
    date = run_cli(config, "build", "--date", "25/11/2026", check=False, process=True)
    assert date.returncode == 2 and "--date must be YYYY-MM-DD" in _one_sentence(date.stderr)
    short = run_cli(config, "admin", "add-user", "ed", input="short\n", check=False, process=True)
    assert short.returncode == 2 and "at least 10 characters" in _one_sentence(short.stderr)
    name = run_cli(
        config, "admin", "add-user", "x" * 101, input="a long enough password\n", check=False, process=True
    )
    assert name.returncode == 2 and "1 to 100 printable" in _one_sentence(name.stderr)

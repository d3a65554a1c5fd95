"""Fixtures with real parts: a feed server over HTTP, an SMTP server over TCP (aiosmtpd),
a SQLite file, and a fresh schema on the local PostgreSQL. What they are built from is in
support/helpers.py."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.operators import hash_password
from newsletter.store import Store
from newsletter.web import create_app

from .support.helpers import (
    PASSWORD,
    PG_URL,
    REQUIRE_PG,
    SECRET,
    STARTED,
    Console,
    FeedServer,
    SmtpSink,
    write_config,
)


@pytest.fixture(autouse=True)
def no_command_left_running() -> Iterator[None]:
    """A command a test started and did not stop (it failed first) is killed after it, so that no
    scheduler or server outlives its test."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (Debian's openssl): (cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", SECRET)
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)


@pytest.fixture
def settings(tmp_path: Path, env: None) -> Settings:
    return load_settings(write_config(tmp_path))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'subscribers.db'}")
    store.migrate()
    yield store
    store.close()


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"PostgreSQL not reachable at {PG_URL}: {exc}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL for this test run, dropped at the end."""
    reason = _postgres_available()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"NEWSLETTER_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    import psycopg

    schema = f"nltest_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    store.migrate()
    with store.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(
            text(
                "TRUNCATE deliveries, stories, issues, subscribers, feed_states, senders, scheduled_runs, "
                "bounce_events, bounce_mails "
                "RESTART IDENTITY CASCADE"
            )
        )
    yield store
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Store:
    """The same test on a SQLite file and on the local PostgreSQL."""
    name = "sqlite_store" if request.param == "sqlite" else "postgres_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def console(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> Iterator[Console]:
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"\nrate_per_second = 400',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\nconnections = 2\n',
    )
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    app = create_app(settings, store=store)
    yield Console(app, store, settings, config)
    assert app.extensions["newsletter"].confirmations.wait_idle()
    store.close()

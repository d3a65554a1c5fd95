"""The database itself: its engines and sessions, SQLite's pragmas, and the schema's migrations.
SQLite or PostgreSQL, by URL; `Store` builds every query on this.

A failure of the database (it cannot be reached or opened, a table is missing, the disk is full)
becomes one DatabaseError that names it, wherever a session or a connection is used; an
IntegrityError stays itself, for the queries that expect one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigError, DatabaseError
from ..private import create_private, private_folder

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "Database"]

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _server_engine(url: str) -> Engine:
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as e:  # the driver is an extra: SQLite-only installs lack it
        raise ConfigError(
            f"database_url names a server whose driver is not installed ({e.name}); for PostgreSQL "
            "install the extra: pip install 'newsletter[postgresql]'"
        ) from None


class Database:
    """Engines and sessions over one URL: short reads, and writes that take SQLite's lock at BEGIN."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.described = _described(url)  # as a sentence names it
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            try:
                self._prepare_sqlite_folder(url)
            except OSError as exc:
                raise DatabaseError(f"{self.described} cannot be created: {exc.strerror or exc}") from exc
            self.engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            _configure_sqlite(self.engine)
        else:
            self.engine = _server_engine(url)
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    @staticmethod
    def _prepare_sqlite_folder(url: str) -> None:
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            private_folder(Path(path).parent)
            create_private(Path(path))  # readers' addresses: the owner's alone, and so its WAL

    def close(self) -> None:
        self.engine.dispose()

    # -- sessions -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self.guarded(), self._reads() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction; on SQLite it takes the write lock at BEGIN (no upgrade deadlock)."""
        with self.guarded(), self._writes() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """A failure of the database inside becomes one DatabaseError that names it and says what
        the database answered; an IntegrityError (a row already there) is the caller's to catch."""
        try:
            yield
        except sa_exc.IntegrityError:
            raise
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            said = _answer(exc)
            raise DatabaseError(f"{self.described} could not be used: {said}", said) from exc

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except sa_exc.OperationalError:
            return False

    def migrate(self) -> str:
        """Create or upgrade the schema with Alembic (idempotent); returns the revision now in force."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.guarded():
            with self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection if self.is_sqlite else None
                if raw is not None:  # SQLite's way to rebuild a table others point at: keys off,
                    raw.execute("PRAGMA foreign_keys=OFF")  # outside the transaction, then checked
                try:
                    with conn.begin():
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, "head")
                        if raw is not None and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                            raise DatabaseError(
                                f"{self.described} could not be migrated: a row would point at nothing",
                                "foreign key check failed",
                            )
                finally:
                    if raw is not None:
                        raw.execute("PRAGMA foreign_keys=ON")
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision() or ""

    def _insert(self, model: Any) -> Any:
        if self.is_sqlite:
            return sqlite.insert(model)
        from sqlalchemy.dialects import postgresql  # 30 ms at import: not for a SQLite file

        return postgresql.insert(model)


def _described(url: str) -> str:
    """The database as a sentence names it: "the database file PATH", or its URL with the
    password hidden and without the options ("the database postgresql://news:***@db:5432/news")."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        return "the database"
    if parsed.get_backend_name() == "sqlite":
        return f"the database file {parsed.database or ':memory:'}"
    shown = parsed.set(drivername=parsed.get_backend_name(), query={})
    return f"the database {shown.render_as_string(hide_password=True)}"


def _answer(exc: BaseException) -> str:
    """What the database (or its driver) said, in one line; and what to do when the schema is missing."""
    said = getattr(exc, "orig", None) or exc
    lines = str(said).strip().splitlines()
    answer = lines[0].strip() if lines else type(said).__name__
    if "no such table" in answer or ("relation" in answer and "does not exist" in answer):
        answer += " (is the schema there? 'newsletter init' creates it)"
    return answer


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys; and transactions that SQLAlchemy begins itself."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below emit BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

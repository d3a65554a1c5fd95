"""The database itself: its engines and sessions, SQLite's pragmas, and the schema's migrations.
SQLite or PostgreSQL, by URL; `Store` builds every query on this."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigError
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
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._prepare_sqlite_folder(url)
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
        with self._reads() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction; on SQLite it takes the write lock at BEGIN (no upgrade deadlock)."""
        with self._writes() as session, session.begin():
            yield session

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except OperationalError:
            return False

    def migrate(self) -> str:
        """Create or upgrade the schema with Alembic (idempotent); returns the revision now in force."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""

    def _insert(self, model: Any) -> Any:
        if self.is_sqlite:
            return sqlite.insert(model)
        from sqlalchemy.dialects import postgresql  # 30 ms at import: not for a SQLite file

        return postgresql.insert(model)


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

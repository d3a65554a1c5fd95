"""Migrations on a SQLite file and on the local PostgreSQL alike."""

from newsletter.store import Store

from ..support.helpers import ROOT


def test_migrate_is_idempotent_and_matches_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from newsletter.db.models import Base

    head = max(p.name[:4] for p in (ROOT / "newsletter/db/migrations/versions").glob("0*.py"))
    assert store.migrate() == head
    assert store.migrate() == head
    assert store.ping()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff  # the migrations build exactly the tables the models describe

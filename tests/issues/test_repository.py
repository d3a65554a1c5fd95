"""The issue repository on a SQLite file and on the local PostgreSQL alike."""

from datetime import date

from newsletter.store import Store

from ..support.deliveries import NOW, make_issue


def test_one_issue_per_date(store: Store) -> None:
    make_issue(store)
    assert (
        store.create_issue(
            date(2026, 11, 25),
            story_ids=[],
            content=lambda i: ("", "", "", ""),
            placeholder_key=None,
            now=NOW,
        )
        is None
    )

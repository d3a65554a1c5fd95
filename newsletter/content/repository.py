"""Feeds' caching state and the stories gathered from them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    func,
    select,
)

from ..db.engine import Database
from ..db.models import (
    FeedState,
    Story,
)
from .records import FetchedStory

__all__ = ["StoryRepository"]


class StoryRepository(Database):
    """Feed states and stories."""

    def feed_state(self, url: str) -> FeedState | None:
        with self.read() as s:
            return s.get(FeedState, url)

    def save_feed_state(
        self, url: str, *, etag: str | None, last_modified: str | None, error: str | None, now: datetime
    ) -> None:
        with self.write() as s:
            state = s.get(FeedState, url)
            if state is None:
                state = FeedState(url=url, checked_at=now)
                s.add(state)
            if error is None:
                state.etag, state.last_modified = etag, last_modified
            state.checked_at, state.last_error = now, error

    def add_stories(self, stories: Iterable[FetchedStory], *, now: datetime) -> int:
        """Store stories not seen before (by identity); returns how many were new."""
        values = [
            {
                "identity": st.identity,
                "source": st.source,
                "title": st.title,
                "link": st.link,
                "summary": st.summary,
                "bullets": list(st.bullets),
                "author": st.author,
                "image": st.image,
                "section": st.section,
                "published_at": st.published_at,
                "fetched_at": now,
            }
            for st in stories
        ]
        if not values:
            return 0
        stmt = self._insert(Story).on_conflict_do_nothing(index_elements=["identity"])
        with self.write() as s:
            before = s.scalar(select(func.count()).select_from(Story)) or 0
            s.execute(stmt, values)
            after = s.scalar(select(func.count()).select_from(Story)) or 0
        return after - before

    def unused_stories(self, *, since: datetime, until: datetime) -> list[Story]:
        """Stories in no issue yet, published (or, undated, fetched) within [since, until]."""
        when = func.coalesce(Story.published_at, Story.fetched_at)
        with self.read() as s:
            q = select(Story).where(Story.issue_id.is_(None), when >= since, when <= until)
            return list(s.scalars(q.order_by(Story.id)))

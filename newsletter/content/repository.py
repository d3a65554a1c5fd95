"""Feeds' caching state and the stories gathered from them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    select,
    update,
)

from ..db.engine import Database
from ..db.models import (
    FeedState,
    Story,
    storable,
)
from .embed import EmbedError, blob_of, embed, story_text, vector_of
from .records import FetchedStory

__all__ = ["StoryRepository"]

log = logging.getLogger(__name__)

# identities asked about in one query (SQLite allows 32,766 parameters, PostgreSQL 65,535)
_LOOKUP_CHUNK = 500


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

    def add_stories(
        self, stories: Iterable[FetchedStory], *, now: datetime, vectors: Mapping[str, bytes] | None = None
    ) -> int:
        """Store stories not seen before (by identity), each with its sentence vector (from
        `vectors`, as new_vectors made them for several feeds at once, or made here); returns how
        many were new."""
        values: list[dict[str, Any]] = [
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
        if vectors is None:
            vectors = self._new_vectors(values)  # before the write: the model runs without the lock
        for v in values:
            v["embedding"] = vectors.get(storable(v["identity"]))
        stmt = self._insert(Story).on_conflict_do_nothing(index_elements=["identity"])
        with self.write() as s:
            before = s.scalar(select(func.count()).select_from(Story)) or 0
            s.execute(stmt, values)
            after = s.scalar(select(func.count()).select_from(Story)) or 0
        return after - before

    def new_vectors(self, stories: Iterable[FetchedStory]) -> dict[str, bytes]:
        """{identity as stored: vector} for those of `stories` not stored yet, embedded in one
        batch: a gather makes the vectors of all its feeds at once (one run of the model, not one
        per feed), then stores each feed's stories with add_stories."""
        return self._new_vectors(
            [
                {"identity": st.identity, "title": st.title, "summary": st.summary, "bullets": st.bullets}
                for st in stories
            ]
        )

    def _new_vectors(self, values: list[dict[str, Any]]) -> dict[str, bytes]:
        """{identity as stored: vector} for the stories not stored yet, embedded in one batch. A
        model that cannot run stores them without one (fill_embeddings tries again), never drops them."""
        new: dict[str, dict[str, Any]] = {}
        for v in values:
            new.setdefault(storable(v["identity"]), v)  # the first of two alike is the one stored
        keys = list(new)
        with self.read() as s:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                asked = keys[start : start + _LOOKUP_CHUNK]
                for (stored,) in s.execute(select(Story.identity).where(Story.identity.in_(asked))):
                    new.pop(stored, None)
        if not new:
            return {}
        try:
            vectors = embed([story_text(v["title"], v["summary"], v["bullets"]) for v in new.values()])
        except EmbedError as exc:
            log.warning("%d new stories stored without a sentence vector: %s", len(new), exc)
            return {}
        return {key: blob_of(vector) for key, vector in zip(new, vectors, strict=True)}

    def fill_embeddings(self, stories: Sequence[Story]) -> int:
        """Give each of these stories that has no sentence vector (stored before migration 0011, or
        while the model could not run) its vector, stored and set on the object; returns how many.
        Raises EmbedError when the model cannot run."""
        lacking = [st for st in stories if vector_of(st.embedding) is None]
        if not lacking:
            return 0
        vectors = embed([story_text(st.title, st.summary, st.bullets or ()) for st in lacking])
        blobs = [blob_of(vector) for vector in vectors]
        with self.write() as s:  # the ORM's bulk UPDATE by primary key: one statement, many rows
            s.execute(
                update(Story), [{"id": st.id, "embedding": b} for st, b in zip(lacking, blobs, strict=True)]
            )
        for st, b in zip(lacking, blobs, strict=True):
            st.embedding = b
        return len(lacking)

    def unused_stories(self, *, since: datetime, until: datetime, used_too: bool = False) -> list[Story]:
        """Stories in no issue yet, published (or, undated, fetched) within [since, until]; with
        `used_too`, those a daily issue told as well (the weekly edition retells the week)."""
        when = func.coalesce(Story.published_at, Story.fetched_at)
        with self.read() as s:
            q = select(Story).where(when >= since, when <= until)
            if not used_too:
                q = q.where(Story.issue_id.is_(None))
            return list(s.scalars(q.order_by(Story.id)))

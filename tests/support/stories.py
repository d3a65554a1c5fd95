"""Stories as the feeds give them (FetchedStory), for the tests that store, embed and publish them."""

from __future__ import annotations

from datetime import datetime, timedelta

from newsletter.content.records import FetchedStory


def wire_story(
    n: int, title: str, summary: str = "", bullets: tuple[str, ...] = (), *, now: datetime
) -> FetchedStory:
    """The Wire's story number n, in section News, published n hours before `now`."""
    return FetchedStory(
        identity=f"https://wire.example/{n}",
        source="Wire",
        title=title,
        link=f"https://wire.example/{n}",
        summary=summary,
        bullets=bullets,
        author=None,
        image=None,
        section="News",
        published_at=now - timedelta(hours=n),
    )

"""A story as a feed gave it, before it is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["FetchedStory"]


@dataclass(frozen=True)
class FetchedStory:
    """A story as a feed gave it, before it is stored (sources never touch the database; the
    repository keeps it)."""

    identity: str
    source: str
    title: str
    link: str
    summary: str
    bullets: tuple[str, ...]
    author: str | None
    image: str | None
    section: str
    published_at: datetime | None

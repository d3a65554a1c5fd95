"""Pure: choose, de-duplicate, order and section the day's stories."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["Digest", "Section", "DigestStory", "choose", "issue_window"]

# A story with a picture or a summary beats a slightly newer bare headline.
IMAGE_BONUS = timedelta(hours=2)
SUMMARY_BONUS = timedelta(hours=1)


@dataclass(frozen=True)
class DigestStory:
    id: int
    title: str
    link: str
    source: str
    section: str
    summary: str
    bullets: tuple[str, ...]
    author: str | None
    image: str | None
    published_at: datetime | None
    fetched_at: datetime

    @property
    def when(self) -> datetime:
        return self.published_at or self.fetched_at

    @property
    def score(self) -> datetime:
        bonus = IMAGE_BONUS if self.image else timedelta()
        if self.summary or self.bullets:
            bonus += SUMMARY_BONUS
        return self.when + bonus


@dataclass(frozen=True)
class Section:
    name: str
    stories: tuple[DigestStory, ...]


@dataclass(frozen=True)
class Digest:
    issue_date: date
    lead: DigestStory
    sections: tuple[Section, ...]

    @property
    def stories(self) -> tuple[DigestStory, ...]:
        """Every story in reading order: the lead, then each section's."""
        return (self.lead, *(s for sec in self.sections for s in sec.stories))


def issue_window(
    issue_date: date, *, now: datetime, tz: ZoneInfo, window_hours: int
) -> tuple[datetime, datetime]:
    """[since, until]: the window ends at the issue moment (now, or the end of a past date)."""
    end_of_day = datetime.combine(issue_date + timedelta(days=1), time(), tzinfo=tz)
    until = min(now, end_of_day)
    return until - timedelta(hours=window_hours), until


def choose(
    candidates: Sequence[DigestStory],
    *,
    issue_date: date,
    max_stories: int,
    min_stories: int,
    section_order: Sequence[str] = (),
) -> Digest | None:
    """The issue's stories: best first, at most `max_stories`, one lead; None when too few."""
    ranked = sorted(candidates, key=lambda s: (s.score, s.id), reverse=True)
    chosen = _unique(ranked)[:max_stories]
    if not chosen or len(chosen) < min_stories:
        return None
    with_image = [s for s in chosen if s.image]
    lead = with_image[0] if with_image else chosen[0]
    rest = [s for s in chosen if s is not lead]
    order = {name: i for i, name in enumerate(dict.fromkeys(section_order))}
    names = sorted({s.section for s in rest}, key=lambda n: (order.get(n, len(order)), n.lower()))
    sections = tuple(Section(n, tuple(s for s in rest if s.section == n)) for n in names)
    return Digest(issue_date=issue_date, lead=lead, sections=sections)


def _unique(ranked: Sequence[DigestStory]) -> list[DigestStory]:
    """Drop a story whose link or headline already appears (the same news from two feeds)."""
    seen: set[str] = set()
    kept = []
    for story in ranked:
        keys = {"link:" + story.link, "title:" + _title_key(story.title)}
        if keys & seen:
            continue
        seen |= keys
        kept.append(story)
    return kept


def _title_key(title: str) -> str:
    return " ".join(re.findall(r"\w+", title.lower()))

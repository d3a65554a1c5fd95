"""Pure: choose, cluster, order and section the day's stories."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ..config import DigestSettings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["Digest", "Section", "DigestStory", "assembled", "choose", "issue_window", "narrowed"]

# A story with a picture or a summary beats a slightly newer bare headline.
IMAGE_BONUS = timedelta(hours=2)
SUMMARY_BONUS = timedelta(hours=1)
# A cluster's first story is its face only when its date is believable: no more than this ahead
# of the next source's telling (a feed that backdates its story does not win by it).
SCOOP = timedelta(hours=3)
# A headline of this many words or more, word for word another source's, names one event.
RETOLD_WORDS = 5


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
    # the story's sentence embedding as stored (content.embed), None when it has none
    embedding: bytes | None = field(default=None, compare=False, repr=False)
    # the same event as told by other sources ("Also covered by"); empty for a story told once
    also: tuple[DigestStory, ...] = field(default=(), compare=False)

    @property
    def coverage(self) -> int:
        """How many sources told this story."""
        return 1 + len(self.also)

    @property
    def complete(self) -> tuple[bool, bool]:
        """What makes a story the best face of its cluster: a summary or bullets, then an image."""
        return bool(self.summary or self.bullets), bool(self.image)

    @property
    def when(self) -> datetime:
        return self.published_at or self.fetched_at

    @property
    def dated(self) -> bool:
        """The feed gave a date that was not in the future (sources.py). An undated story is
        dated by its fetch, the newest possible: that ranks it, but never makes it the lead or a
        cluster's face."""
        return self.published_at is not None

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
    # stories left out as exact copies of a chosen one (same link or headline): used all the same
    copies: tuple[int, ...] = ()
    weekly: bool = False  # the weekly edition: the best of the seven days to issue_date

    @property
    def stories(self) -> tuple[DigestStory, ...]:
        """Every item in reading order, each once: the lead, then each section's."""
        return (self.lead, *(s for sec in self.sections for s in sec.stories))

    @property
    def used(self) -> list[int]:
        """The ids of every story this issue tells, the other sources of a cluster included."""
        return [t.id for s in self.stories for t in (s, *s.also)] + list(self.copies)


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
    cluster: bool = True,
    cluster_threshold: float = DigestSettings.cluster_threshold,
) -> Digest | None:
    """The issue's items: the widest covered first, at most `max_stories` of them, one lead;
    None when too few. An item is a cluster of stories of one event, told by its best story."""
    ranked = sorted(candidates, key=lambda s: (s.score, s.id), reverse=True)
    if cluster:
        from .cluster import clusters  # imported where it runs: most commands choose nothing

        # only a source's own repeats are set aside unread: another source's story with the same
        # link or headline is clustered on what it says (a shared link or a generic headline such
        # as "Morning briefing" is no proof of one event, and a copy must never speak for another)
        unique, copies = _unique(ranked, within_source=True)
        groups = clusters(unique, _embeddings(unique), threshold=cluster_threshold)
        items = _retold([[unique[i] for i in g] for g in groups])
    else:
        unique, copies = _unique(ranked, within_source=False)
        items = list(unique)
    hidden = [(copy.id, of) for copy, of in copies]
    chosen = sorted(items, key=lambda s: (s.coverage, s.score, s.id), reverse=True)[:max_stories]
    if not chosen or len(chosen) < min_stories:
        return None
    lead = max(chosen, key=_as_lead)
    rest = [s for s in chosen if s is not lead]
    order = {name: i for i, name in enumerate(dict.fromkeys(section_order))}
    names = sorted({s.section for s in rest}, key=lambda n: (order.get(n, len(order)), n.lower()))
    sections = tuple(Section(n, tuple(s for s in rest if s.section == n)) for n in names)
    told = {t.id for s in chosen for t in (s, *s.also)}
    return Digest(issue_date, lead, sections, copies=tuple(c for c, of in hidden if of in told))


def _as_lead(s: DigestStory) -> tuple[int, bool, datetime, bool, int]:
    """How an item ranks for the lead: the widest covered; an undated story (or one dated in the
    future) may be chosen, never the lead by its newness."""
    return (s.coverage, s.dated, s.score, bool(s.image), s.id)


def assembled(issue_date: date, items: Sequence[DigestStory], *, weekly: bool = False) -> Digest | None:
    """A stored issue as a digest again: its items in reading order (the lead first, then each
    section's), each with its other sources in `also`. None for an issue without items."""
    if not items:
        return None
    lead, *rest = items
    names = list(dict.fromkeys(s.section for s in rest))
    sections = tuple(Section(n, tuple(s for s in rest if s.section == n)) for n in names)
    return Digest(issue_date, lead, sections, weekly=weekly)


def narrowed(digest: Digest, theirs: Callable[[DigestStory], bool]) -> Digest | None:
    """The digest as a reader gets it (SPEC 8): the items `theirs` keeps (their sections', and those
    of sources without a section), in the issue's order; the lead is the best of them by the
    lead's own rule. None when nothing is left for the reader."""
    kept = [s for s in digest.stories if theirs(s)]
    if not kept:
        return None
    lead = digest.lead if theirs(digest.lead) else max(kept, key=_as_lead)
    sections = tuple(
        Section(sec.name, tuple(s for s in sec.stories if theirs(s) and s is not lead))
        for sec in digest.sections
    )
    kept_sections = tuple(sec for sec in sections if sec.stories)
    return replace(digest, lead=lead, sections=kept_sections)


def _embeddings(stories: Sequence[DigestStory]) -> NDArray[np.float32] | None:
    """The stories' embeddings as unit rows (a zero row for one without); None when none has one."""
    import numpy as np

    from .embed import DIMENSIONS, vector_of

    rows = [vector_of(s.embedding) for s in stories]
    if all(r is None for r in rows):
        return None
    zero = np.zeros(DIMENSIONS, dtype=np.float32)
    return np.vstack([zero if r is None else r for r in rows])


def _item(stories: Sequence[DigestStory]) -> DigestStory:
    """A cluster told by its most complete story (then the earliest), the others in `also`. A
    date proves nothing when it is all that sets a story apart: an undated story is never the
    earliest, nor one dated more than SCOOP before every other telling."""
    dated = sorted(s.when for s in stories if s.dated)
    believable = dated[1] - SCOOP if len(dated) > 1 else None

    def earliness(s: DigestStory) -> tuple[bool, float]:
        trusted = s.dated and (believable is None or s.when >= believable)
        return trusted, -s.when.timestamp()

    face = max(stories, key=lambda s: (s.complete, *earliness(s), -s.id))
    others = sorted((s for s in stories if s is not face), key=lambda s: (s.when, s.id))
    return replace(face, also=tuple(others))


def _unique(
    ranked: Sequence[DigestStory], *, within_source: bool
) -> tuple[list[DigestStory], list[tuple[DigestStory, int]]]:
    """The stories whose link and headline are each the first of their kind (within their own
    source, or across all), and the others as (copy, id of the first) pairs: a feed that repeats
    an item, or (across sources, without clustering) two feeds with one headline."""
    first: dict[tuple[str, str], int] = {}
    kept = []
    copies = []
    for story in ranked:
        scope = story.source if within_source else ""
        keys = ((scope, "link:" + story.link), (scope, "title:" + _title_key(story.title)))
        seen = [first[k] for k in keys if k in first]
        if seen:
            copies.append((story, seen[0]))
            continue
        for k in keys:
            first[k] = story.id
        kept.append(story)
    return kept, copies


def _retold(members: Sequence[list[DigestStory]]) -> list[DigestStory]:
    """The items of the clusters. A story left alone by the clustering whose headline is word for
    word another source's, and specific enough to name one event (RETOLD_WORDS words or more),
    is that source's telling of it, however far apart in time: it joins that item's "also",
    never its face (a feed copying a headline cannot put its own summary or picture under it)."""
    items = [_item(m) for m in members]
    by_title: dict[str, int] = {}
    joined: dict[int, list[DigestStory]] = {}
    gone: set[int] = set()
    # the first telling by its date (an undated one last) keeps the face; a later copy joins it
    for k, item in sorted(enumerate(items), key=lambda e: (not e[1].dated, e[1].when, e[1].id)):
        key = _title_key(item.title)
        told_by = by_title.get(key)
        if len(members[k]) == 1 and told_by is not None and len(key.split()) >= RETOLD_WORDS:
            other = items[told_by]
            sources = {t.source for t in (other, *other.also, *joined.get(told_by, ()))}
            if item.source not in sources:
                joined.setdefault(told_by, []).append(item)
                gone.add(k)
                continue
        for t in (item, *item.also):
            by_title.setdefault(_title_key(t.title), k)
    return [
        replace(s, also=tuple(sorted((*s.also, *joined.get(k, ())), key=lambda t: (t.when, t.id))))
        for k, s in enumerate(items)
        if k not in gone
    ]


def _title_key(title: str) -> str:
    return " ".join(re.findall(r"\w+", title.lower()))

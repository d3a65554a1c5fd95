"""Gathering the feeds and building the day's issue: one rule for the command line, the scheduler
and the console."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from ..config import WEEKDAYS, Settings
from ..content.digest import DigestStory, choose, issue_window
from ..db.models import Edition, Issue, Story
from ..errors import DatabaseError

# sources (httpx, feedparser) and render (jinja2, premailer) are imported where they are used: every
# command starts a process, and most gather and render nothing
if TYPE_CHECKING:
    from ..content.sources import FeedResult, Limits
    from ..store import Store

log = logging.getLogger(__name__)

__all__ = [
    "BuildOutcome",
    "GatherReport",
    "build",
    "digest_story",
    "editions",
    "gather",
    "gather_and_build",
    "today",
]

WEEK_HOURS = 7 * 24  # the weekly edition's window


def today(settings: Settings, now: datetime) -> date:
    return now.astimezone(settings.newsletter.tz).date()


@dataclass(frozen=True)
class GatherReport:
    results: list[FeedResult]
    new_stories: int

    @property
    def failed(self) -> list[FeedResult]:
        return [r for r in self.results if not r.ok]


def gather(
    settings: Settings,
    store: Store,
    *,
    now: datetime,
    limits: Limits | None = None,
    on_done: Callable[[FeedResult], None] | None = None,
) -> GatherReport:
    """Fetch every source and store the stories not seen before; failures are reported, not raised."""
    from ..content.sources import DEFAULT_LIMITS, Conditional, fetch_all

    conditionals = {}
    for src in settings.sources:
        state = store.feed_state(src.url) if src.is_remote else None
        if state is not None:
            conditionals[src.url] = Conditional(state.etag, state.last_modified)
    results = fetch_all(
        settings.sources,
        base_dir=settings.config_dir,
        conditionals=conditionals,
        now=now,
        limits=limits or DEFAULT_LIMITS,
        on_done=on_done,
    )
    try:  # every feed's new stories in one run of the model
        vectors: dict[str, bytes] | None = store.new_vectors(
            [st for result in results for st in result.stories]
        )
    except (DatabaseError, SQLAlchemyError):  # each feed then meets it and reports it
        vectors = None
    new = sum(_keep(store, result, now=now, vectors=vectors) for result in results)
    return GatherReport(results=results, new_stories=new)


def _keep(store: Store, result: FeedResult, *, now: datetime, vectors: dict[str, bytes] | None) -> int:
    """Store one feed's new stories, then its state; returns how many were new. A store that fails
    is that feed's error, reported like a broken feed, never the others': the feed's ETag is then
    not kept, so the next gather fetches it whole again."""
    added = 0
    try:
        added = store.add_stories(result.stories, now=now, vectors=vectors)
    except (DatabaseError, SQLAlchemyError) as exc:
        result.error = f"its stories could not be stored ({_first_line(exc)})"
    if result.source.is_remote:
        try:
            store.save_feed_state(
                result.source.url,
                etag=result.etag,
                last_modified=result.last_modified,
                error=result.error,
                now=now,
            )
        except (DatabaseError, SQLAlchemyError) as exc:
            result.error = result.error or f"its state could not be stored ({_first_line(exc)})"
    return added


def _first_line(exc: DatabaseError | SQLAlchemyError) -> str:
    """What the database said, without SQLAlchemy's statement and parameters."""
    said = exc.said if isinstance(exc, DatabaseError) else str(getattr(exc, "orig", None) or exc).strip()
    return (said.splitlines() or [type(exc).__name__])[0][:300]


@dataclass(frozen=True)
class BuildOutcome:
    issue: Issue | None
    created: bool
    reason: str  # why there is no issue, or how it came to be
    edition: Edition = Edition.DAILY


def editions(settings: Settings, issue_date: date) -> list[Edition]:
    """The issues a date has (SPEC 8): the daily one, and on `weekly_day` the weekly one too."""
    weekly = settings.digest.weekly and WEEKDAYS[issue_date.weekday()] == settings.digest.weekly_day.lower()
    return [Edition.DAILY, Edition.WEEKLY] if weekly else [Edition.DAILY]


def build(
    settings: Settings, store: Store, *, issue_date: date, now: datetime, edition: Edition = Edition.DAILY
) -> BuildOutcome:
    """The issue of an edition for a date: the one already built, a new one, or none (too few
    stories). A daily issue tells the window's stories no issue told; the weekly one the best
    clusters of the seven days to the issue moment, told by a daily issue or not. Its renderings
    for the sets of sections its audience holds are made here too (issues.variants)."""
    existing = store.issue_for_date(issue_date, edition)
    label = "" if edition is Edition.DAILY else f"{edition} "
    if existing is not None:
        return BuildOutcome(
            existing, False, f"{label}issue {existing.id} for {issue_date} was already built", edition
        )
    d = settings.digest
    weekly = edition is Edition.WEEKLY
    hours = WEEK_HOURS if weekly else d.window_hours
    since, until = issue_window(issue_date, now=now, tz=settings.newsletter.tz, window_hours=hours)
    stored = store.unused_stories(since=since, until=until, used_too=weekly)
    caveat = _fill_embeddings(store, stored) if d.cluster else ""
    candidates = [_item(s) for s in stored]
    digest = choose(
        candidates,
        issue_date=issue_date,
        max_stories=d.weekly_max_stories if weekly else d.max_stories,
        min_stories=d.min_stories,
        section_order=[s.section or "" for s in settings.sources],
        cluster=d.cluster,
        cluster_threshold=d.cluster_threshold,
    )
    if digest is None:
        return BuildOutcome(
            None,
            False,
            f"no {label}issue for {issue_date}: {len(candidates)} {'' if weekly else 'new '}"
            f"{'story' if len(candidates) == 1 else 'stories'} in the last {hours} hours, "
            f"{d.min_stories} needed",
            edition,
        )
    digest = dataclasses.replace(digest, weekly=weekly)

    from ..content.render import render_issue

    rendered = render_issue(digest, settings, issue_id=None)  # the slow part, before any lock is taken
    items = [[s.id, *(o.id for o in s.also)] for s in digest.stories]
    issue = store.create_issue(
        issue_date,
        edition=edition,
        story_ids=digest.used,
        items=items,
        content=rendered.for_issue,
        placeholder_key=rendered.placeholders.key,
        now=now,
    )
    if issue is None:  # another builder stored this date's issue first
        issue = store.issue_for_date(issue_date, edition)
        return BuildOutcome(
            issue, False, f"{label}issue for {issue_date} was built by another process", edition
        )
    from .variants import render_variants

    renderings = render_variants(settings, store, issue)
    shown = f", {renderings} renderings for its readers' sections" if renderings > 1 else ""
    return BuildOutcome(
        issue,
        True,
        f"built {label}issue {issue.id} for {issue_date} with {issue.story_count} stories{shown}{caveat}",
        edition,
    )


def gather_and_build(
    settings: Settings,
    store: Store,
    *,
    issue_date: date,
    now: datetime,
    on_done: Callable[[FeedResult], None] | None = None,
) -> tuple[GatherReport | None, list[BuildOutcome]]:
    """The one rule for `build`, `run` and the scheduler: the feeds are gathered only when the
    date lacks an issue (a built issue never changes), then each edition of the date is built
    from what is stored, even when no feed could be read (yesterday's unused stories may be
    enough). The daily issue first: it takes the day's stories that the weekly one retells."""
    report = None
    wanted = editions(settings, issue_date)
    if any(store.issue_for_date(issue_date, e) is None for e in wanted):
        report = gather(settings, store, now=now, on_done=on_done)
    return report, [build(settings, store, issue_date=issue_date, now=now, edition=e) for e in wanted]


def _fill_embeddings(store: Store, stories: list[Story]) -> str:
    """Stories stored before they had vectors, or while the model could not run, get theirs now;
    if the model still cannot run, the day is clustered by its words alone, and the outcome says
    so (the text returned, "" when all went well)."""
    from ..content.embed import EmbedError

    try:
        store.fill_embeddings(stories)
    except EmbedError as exc:
        log.warning("clustering by words alone: %s", exc)
        return f" (stories clustered by their words alone: {exc})"
    return ""


def _item(s: Story) -> DigestStory:
    """A stored story as the digest reads it: the same fields, the bullets as a tuple."""
    same = {f.name: getattr(s, f.name) for f in dataclasses.fields(DigestStory) if f.name != "also"}
    return DigestStory(**same | {"bullets": tuple(s.bullets or ())})


def digest_story(item: list[Story]) -> DigestStory:
    """A stored issue's item as the digest told it: its face story, the others in `also`."""
    face, *others = item
    return dataclasses.replace(_item(face), also=tuple(_item(o) for o in others))

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

from ..config import Settings
from ..content.digest import DigestStory, choose, issue_window
from ..db.models import Issue, Story
from ..errors import DatabaseError

# sources (httpx, feedparser) and render (jinja2, premailer) are imported where they are used: every
# command starts a process, and most gather and render nothing
if TYPE_CHECKING:
    from ..content.sources import FeedResult, Limits
    from ..store import Store

log = logging.getLogger(__name__)

__all__ = ["BuildOutcome", "GatherReport", "build", "gather", "gather_and_build", "today"]


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


def build(settings: Settings, store: Store, *, issue_date: date, now: datetime) -> BuildOutcome:
    """The issue for a date: the one already built, a new one, or none (too few new stories)."""
    existing = store.issue_for_date(issue_date)
    if existing is not None:
        return BuildOutcome(existing, False, f"issue {existing.id} for {issue_date} was already built")
    d = settings.digest
    since, until = issue_window(issue_date, now=now, tz=settings.newsletter.tz, window_hours=d.window_hours)
    stored = store.unused_stories(since=since, until=until)
    caveat = _fill_embeddings(store, stored) if d.cluster else ""
    candidates = [_item(s) for s in stored]
    digest = choose(
        candidates,
        issue_date=issue_date,
        max_stories=d.max_stories,
        min_stories=d.min_stories,
        section_order=[s.section or "" for s in settings.sources],
        cluster=d.cluster,
        cluster_threshold=d.cluster_threshold,
    )
    if digest is None:
        return BuildOutcome(
            None,
            False,
            f"no issue for {issue_date}: {len(candidates)} new "
            f"{'story' if len(candidates) == 1 else 'stories'} in the last "
            f"{d.window_hours} hours, {d.min_stories} needed",
        )

    from ..content.render import render_issue

    rendered = render_issue(digest, settings, issue_id=None)  # the slow part, before any lock is taken
    items = [[s.id, *(o.id for o in s.also)] for s in digest.stories]
    issue = store.create_issue(
        issue_date,
        story_ids=digest.used,
        items=items,
        content=rendered.for_issue,
        placeholder_key=rendered.placeholders.key,
        now=now,
    )
    if issue is None:  # another builder stored this date's issue first
        issue = store.issue_for_date(issue_date)
        return BuildOutcome(issue, False, f"issue for {issue_date} was built by another process")
    return BuildOutcome(
        issue, True, f"built issue {issue.id} for {issue_date} with {issue.story_count} stories{caveat}"
    )


def gather_and_build(
    settings: Settings,
    store: Store,
    *,
    issue_date: date,
    now: datetime,
    on_done: Callable[[FeedResult], None] | None = None,
) -> tuple[GatherReport | None, BuildOutcome]:
    """The one rule for `build`, `run` and the scheduler: the feeds are gathered only when the
    date has no issue yet (a built issue never changes), then the issue is built from what is
    stored, even when no feed could be read (yesterday's unused stories may be enough)."""
    report = None
    if store.issue_for_date(issue_date) is None:
        report = gather(settings, store, now=now, on_done=on_done)
    return report, build(settings, store, issue_date=issue_date, now=now)


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

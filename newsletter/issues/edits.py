"""The editor's hour (SPEC 9): an operator changes a built issue before its send begins.

An edit is worked out on the issue as last read (`arranged`, pure), rendered again (the issue's
own rendering and one for every set of sections its audience holds) without any lock, then stored
with its log line in one transaction that checks the issue is still `built` and unchanged since it
was read (IssueRepository.rewrite_issue). A send fixes its audience at a version too
(delivery.claims.start_send), so an edit and the start of a send never both win: the edit that
comes second is refused (SendBegun), the send that comes second reads the edit's renderings."""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import Settings
from ..content.digest import assembled
from ..db.models import Edition, Issue, IssueStatus
from ..errors import NewsletterError, NotFoundError, UsageError
from .build import digest_story
from .records import EditNote, Rewrite, SendBegun
from .variants import IssueSections, render_variant, variant_keys

if TYPE_CHECKING:
    from ..store import Store

__all__ = [
    "INTRO_LIMIT",
    "STORY_ACTIONS",
    "Action",
    "Change",
    "BadEdit",
    "Layout",
    "SendBegun",
    "arranged",
    "checked_text",
    "edit_issue",
    "hold_issue",
]

INTRO_LIMIT = 2000  # characters of an editor's intro: two lines, or a few paragraphs at most
TRIES = 5  # edits that keep crossing each other: give up after this many


class Action(enum.StrEnum):
    """What an editor did, as the log names it."""

    DROP = "drop"
    RESTORE = "restore"
    UP = "up"
    DOWN = "down"
    LEAD = "lead"
    SPLIT = "split"
    MERGE = "merge"
    EDIT = "edit"  # the subject and the intro
    HOLD = "hold"
    APPROVE = "approve"
    SEND = "send"


STORY_ACTIONS = (Action.DROP, Action.RESTORE, Action.UP, Action.DOWN, Action.LEAD, Action.SPLIT, Action.MERGE)


class BadEdit(UsageError):
    """An edit the issue cannot take (a story not in it, the lead moved up, a NUL): 400."""


@dataclass(frozen=True)
class Layout:
    """An issue's items in reading order (the lead first, then each section's, every item its face
    story's id first), and the items an editor dropped."""

    items: tuple[tuple[int, ...], ...]
    dropped: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of(cls, items: Sequence[Sequence[int]], dropped: Sequence[Sequence[int]] | None) -> Layout:
        return cls(tuple(tuple(i) for i in items), tuple(tuple(i) for i in dropped or ()))


def arranged(
    layout: Layout, action: Action, story: int, section_of: Mapping[int, str], *, other: int | None = None
) -> Layout:
    """The layout after one story action on the item whose face is `story` (`other`: the item
    merged into it). Items stay grouped as the issue shows them, the lead then each section's:
    up and down move an item within its section, and the first (or last) of a section moves the
    whole section. BadEdit when the issue cannot take it."""
    groups = _groups(layout.items, section_of)
    if action is Action.RESTORE:
        item = _find(layout.dropped, story, "dropped")
        kept = [i for i in layout.dropped if i != item]
        return Layout(_regrouped([*layout.items, item], section_of), tuple(kept))
    item = _find(layout.items, story, "in the issue")
    g = next(n for n, group in enumerate(groups) if item in group)
    k = groups[g].index(item)
    if action is Action.DROP:
        if len(layout.items) == 1:
            raise BadEdit("the issue's last story cannot be dropped")
        items = [i for i in layout.items if i != item]
        return Layout(_regrouped(items, section_of), (*layout.dropped, item))
    if action is Action.LEAD or (action is Action.DOWN and g == 0):
        if g == 0 and action is Action.LEAD:
            raise BadEdit(f"story {story} is already the lead")
        if len(layout.items) == 1:
            raise BadEdit("the issue has one story: it stays the lead")
        new_lead = item if action is Action.LEAD else groups[1][0]
        rest = [i for i in layout.items if i != new_lead]
        return replace(layout, items=_regrouped([new_lead, *rest], section_of))
    if action is Action.UP:
        if g == 0:
            raise BadEdit(f"story {story} is the lead: make another story the lead instead")
        if k > 0:
            groups[g][k - 1], groups[g][k] = groups[g][k], groups[g][k - 1]
        elif g > 1:
            groups[g - 1], groups[g] = groups[g], groups[g - 1]
        else:
            raise BadEdit(f"story {story} is already first after the lead: make it the lead instead")
        return replace(layout, items=tuple(i for group in groups for i in group))
    if action is Action.DOWN:
        if k < len(groups[g]) - 1:
            groups[g][k + 1], groups[g][k] = groups[g][k], groups[g][k + 1]
        elif g < len(groups) - 1:
            groups[g + 1], groups[g] = groups[g], groups[g + 1]
        else:
            raise BadEdit(f"story {story} is already last")
        return replace(layout, items=tuple(i for group in groups for i in group))
    if action is Action.SPLIT:
        if len(item) == 1:
            raise BadEdit(f"story {story} is told by one source: there is nothing to split")
        at = layout.items.index(item)
        items = [*layout.items[:at], *((s,) for s in item), *layout.items[at + 1 :]]
        return replace(layout, items=_regrouped(items, section_of))
    if action is Action.MERGE:
        if other is None:
            raise BadEdit("merge needs the story to merge into this one (`with`)")
        joined = _find(layout.items, other, "in the issue")
        if joined == item:
            raise BadEdit("a story cannot be merged with itself")
        items = [(*item, *joined) if i == item else i for i in layout.items if i != joined]
        return replace(layout, items=_regrouped(items, section_of))
    raise BadEdit(f"{action} is not an edit of the issue's stories")


def _find(items: Sequence[tuple[int, ...]], story: int, where: str) -> tuple[int, ...]:
    for item in items:
        if item[0] == story:
            return item
    raise BadEdit(f"story {story} is not {where}")


def _groups(items: Sequence[tuple[int, ...]], section_of: Mapping[int, str]) -> list[list[tuple[int, ...]]]:
    """The lead alone, then each section's items, sections in the order they first appear (how
    content.digest.assembled reads a stored issue)."""
    lead, *rest = items
    names = list(dict.fromkeys(section_of.get(i[0], "") for i in rest))
    return [[lead], *([i for i in rest if section_of.get(i[0], "") == n] for n in names)]


def _regrouped(
    items: Sequence[tuple[int, ...]], section_of: Mapping[int, str]
) -> tuple[tuple[int, ...], ...]:
    return tuple(i for group in _groups(items, section_of) for i in group)


def checked_text(value: str, *, name: str, limit: int) -> str:
    """An editor's subject or intro: printable text (a NUL, a lone surrogate or another control
    character is refused, BadEdit), its lines joined into one, at most `limit` characters."""
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\r\n" for c in value):
        raise BadEdit(f"the {name} holds a character that is not text")
    joined = " ".join(value.split())
    if len(joined) > limit:
        raise BadEdit(f"the {name} is {len(joined)} characters long; {limit} at most")
    return joined


@dataclass(frozen=True)
class Change:
    """One edit as asked: a story action, or a new subject and intro."""

    action: Action
    story: int | None = None
    other: int | None = None
    subject: str | None = None
    intro: str | None = None

    def detail(self) -> str:
        if self.action is Action.EDIT:
            return f"subject: {self.subject or '(the configured one)'}; intro: {self.intro or '(none)'}"
        return f"story {self.story}" + (f" with story {self.other}" if self.other is not None else "")


def edit_issue(
    settings: Settings, store: Store, issue_id: int, change: Change, *, who: str, now: datetime
) -> Issue:
    """Apply one edit to a built issue and render it again, once for every variant; returns the
    issue as stored. SendBegun once its send has begun (nothing changed), BadEdit for an edit it
    cannot take."""
    for _ in range(TRIES):
        issue = store.get_issue(issue_id)
        if issue is None:
            raise NotFoundError(f"there is no issue {issue_id}")
        if issue.status is not IssueStatus.BUILT:
            raise SendBegun(f"issue {issue_id} is {issue.status}: its send has begun, so it is not changed")
        rewrite = _rewritten(settings, store, issue, change)
        note = EditNote(who, change.action.value, change.detail()[:2000], now)
        if store.rewrite_issue(issue_id, version=issue.version, rewrite=rewrite, note=note):
            found = store.get_issue(issue_id)
            assert found is not None
            return found
    raise NewsletterError(f"issue {issue_id} kept changing while this edit was rendered; try again")


def _rewritten(settings: Settings, store: Store, issue: Issue, change: Change) -> Rewrite:
    """The issue after the edit, rendered: its own rendering and one per set of sections."""
    from ..content.render import render_issue

    items = [[s.id for s in item] for item in store.issue_items(issue)]
    layout = Layout.of(items, issue.dropped)
    ids = [i for item in (*layout.items, *layout.dropped) for i in item]
    stories = store.stories_by_id(ids)
    chosen, intro = issue.chosen_subject, issue.intro
    if change.action is Action.EDIT:
        chosen = checked_text(change.subject or "", name="subject", limit=250) or None
        intro = checked_text(change.intro or "", name="intro", limit=INTRO_LIMIT)
    elif change.story is not None:
        section_of = {i: s.section for i, s in stories.items()}
        layout = arranged(layout, change.action, change.story, section_of, other=change.other)
    digest = assembled(
        issue.issue_date,
        [digest_story([stories[i] for i in item if i in stories]) for item in layout.items],
        weekly=issue.edition is Edition.WEEKLY,
    )
    if digest is None:
        raise BadEdit("the issue would tell no story")
    own = render_issue(digest, settings, issue_id=issue.id, subject=chosen, intro=intro)
    sections = IssueSections.of(digest, settings)
    variants = []
    for key in variant_keys(settings, store, issue, sections):
        variants.append(
            (key, *render_variant(settings, issue.id, digest, sections, key, subject=chosen, intro=intro))
        )
    return Rewrite(
        items=[list(i) for i in layout.items],
        dropped=[list(i) for i in layout.dropped],
        chosen_subject=chosen,
        intro=intro,
        rendered=(own.subject, own.preheader, own.html, own.text),
        placeholder_key=own.placeholders.key,
        variants=variants,
    )


def hold_issue(store: Store, issue_id: int, action: Action, *, who: str, now: datetime) -> bool:
    """Hold an issue, or approve it (for the cron time, or for a send now): logged, and refused
    (SendBegun) once its send has begun. True if that changed anything."""
    held = action is Action.HOLD
    detail = "sent at once" if action is Action.SEND else ""  # logged even when it was approved
    return store.set_held(issue_id, held, EditNote(who, action.value, detail, now))

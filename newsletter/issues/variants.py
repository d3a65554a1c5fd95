"""An issue's audience and its renderings (SPEC 8): readers take some sections, daily or weekly.

An issue is rendered once for each set of sections its audience holds, never once per reader: a
reader's set is cut to the sections the issue has stories in, so most readers share a rendering,
and every reader who takes each of those sections gets the issue's own. The renderings are made
when the issue is built and, for any set that appeared since, when its audience is fixed; the
audience (delivery.claims.start_send) then names each reader's rendering once and for all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Settings
from ..content.digest import Digest, DigestStory, assembled, narrowed
from ..db import widths
from ..db.models import Edition, Frequency, Issue, IssueStatus
from ..delivery.records import WHOLE_ISSUE, Audience, AudienceChanged, Rendering
from ..errors import NewsletterError
from ..subscribers.rules import Choices, effective_sections
from .build import digest_story

if TYPE_CHECKING:
    from ..store import Store

TRIES = 5  # editors who keep changing the issue while its send begins: give up after this many

__all__ = [
    "IssueHeld",
    "IssueSections",
    "fix_audience",
    "frequencies_of",
    "render_variant",
    "render_variants",
    "variant_keys",
]


def frequencies_of(settings: Settings, issue: Issue) -> tuple[Frequency, ...] | None:
    """The readers an edition goes to: weekly readers get the weekly issue, daily readers the
    daily one; without a weekly edition every reader gets the daily (a reader who chose weekly
    before the operator turned it off is not left without mail)."""
    if issue.edition is Edition.WEEKLY:
        return (Frequency.WEEKLY,)
    return (Frequency.DAILY,) if settings.digest.weekly else None


@dataclass(frozen=True)
class IssueSections:
    """What decides a reader's rendering: the sections readers may choose (`offered`), those of
    them the issue has stories in (`present`), and whether it has stories of sources without a
    section (in every reader's issue). A story's section is its source's, as the configuration
    names it: a source without one is everyone's, whatever category its feed gives a story. A
    set of sections is spelled sorted, as it is stored (SectionSet)."""

    offered: tuple[str, ...]
    present: tuple[str, ...]
    universal: bool
    of_source: Mapping[str, str]  # a sectioned source's name (as stored) -> its section

    @classmethod
    def of(cls, digest: Digest, settings: Settings) -> IssueSections:
        of_source = {
            src.name[: widths.NAME]: src.section
            for src in settings.sources
            if src.section and src.section.strip()
        }
        told = {of_source.get(s.source) for s in digest.stories}
        present = tuple(sorted(s for s in told if s is not None))
        return cls(settings.sections, present, None in told, of_source)

    def section_of(self, story: DigestStory) -> str | None:
        """The section a reader chooses to get this story; None: every reader gets it."""
        return self.of_source.get(story.source)

    def key_of(self, chosen: tuple[str, ...]) -> tuple[str, ...] | None:
        """The sections a reader's issue holds: `present` itself for the issue's own rendering;
        None when nothing in it is theirs (no mail)."""
        theirs = set(effective_sections(chosen, Choices(self.offered)))
        key = tuple(sorted(s for s in self.present if s in theirs))
        if not key and not self.universal:
            return None
        return key

    def narrowed(self, digest: Digest, key: tuple[str, ...]) -> Digest | None:
        return narrowed(digest, lambda story: self.section_of(story) in (*key, None))


def _digest(store: Store, issue: Issue) -> Digest | None:
    """The issue's stories as its digest told them; None for an issue without stories (one made
    by hand): every reader gets its own rendering."""
    items = [digest_story(item) for item in store.issue_items(issue)]
    return assembled(issue.issue_date, items, weekly=issue.edition is Edition.WEEKLY)


def render_variants(settings: Settings, store: Store, issue: Issue) -> int:
    """Render the issue for each set of sections its audience holds now that has no rendering
    yet; returns how many renderings the issue has, its own included. A rendering of a version an
    editor has since changed is not stored (issues.edits)."""
    digest = _digest(store, issue)
    if digest is not None:
        _render_missing(settings, store, issue, digest, IssueSections.of(digest, settings))
    return 1 + len(store.issue_variants(issue.id))


def _render_missing(
    settings: Settings, store: Store, issue: Issue, digest: Digest, sections: IssueSections
) -> None:
    made = {v.sections for v in store.issue_variants(issue.id)}
    for key in variant_keys(settings, store, issue, sections):
        if key in made:
            continue
        found = render_variant(
            settings, issue.id, digest, sections, key, subject=issue.chosen_subject, intro=issue.intro
        )
        store.add_variant(issue.id, key, *found, version=issue.version)


def variant_keys(
    settings: Settings, store: Store, issue: Issue, sections: IssueSections
) -> list[tuple[str, ...]]:
    """The sets of sections the issue's audience holds that need a rendering of their own: every
    set but the issue's own, and none for a reader with nothing in it."""
    held = store.audience_sections(frequencies_of(settings, issue))
    keys = {sections.key_of(chosen) for chosen in held}
    return sorted(k for k in keys if k is not None and k != sections.present)


def render_variant(
    settings: Settings,
    issue_id: int,
    digest: Digest,
    sections: IssueSections,
    key: tuple[str, ...],
    *,
    subject: str | None,
    intro: str,
) -> tuple[tuple[str, str, str, str, int], str | None]:
    """The issue's rendering for one set of sections, with its editor's subject and intro:
    ((subject, preheader, html, text, story count), placeholders' key)."""
    from ..content.render import render_issue

    part = sections.narrowed(digest, key)
    if part is None:  # key_of gives only sets with stories: a bug, never a reader's doing
        raise NewsletterError(f"issue {issue_id} has nothing for the sections {', '.join(key)}")
    rendered = render_issue(part, settings, issue_id=issue_id, subject=subject, intro=intro)
    content = (rendered.subject, rendered.preheader, rendered.html, rendered.text, len(part.stories))
    return content, rendered.placeholders.key


def _audience(
    settings: Settings, store: Store, issue: Issue, digest: Digest, sections: IssueSections
) -> Audience:
    variants = {v.sections: v.id for v in store.issue_variants(issue.id)}

    def render(key: tuple[str, ...]) -> Rendering:
        content, placeholder_key = render_variant(
            settings, issue.id, digest, sections, key, subject=issue.chosen_subject, intro=issue.intro
        )
        return Rendering(*content, placeholder_key)

    return Audience(
        frequencies_of(settings, issue),
        sections.key_of,
        variants | {sections.present: WHOLE_ISSUE},
        version=issue.version,
        render=render,
    )


class IssueHeld(NewsletterError):
    """An editor holds the issue: its send does not begin."""


def fix_audience(settings: Settings, store: Store, issue: Issue, *, held_ok: bool = True) -> int:
    """Fix the issue's audience, once (a no-op when its send began before): render every set of
    sections it holds that the build did not (outside any lock), then make the delivery rows. A
    set first chosen in between is rendered while the rows are made, so no reader can keep the
    audience from being fixed; an editor's change in between (issues.edits) means other
    renderings, read again. Returns the rows made."""
    for _ in range(TRIES):
        current = store.get_issue(issue.id)
        if current is None or current.status is not IssueStatus.BUILT:
            return 0
        if current.held and not held_ok:  # a hold moves the version: one in between is seen here
            raise IssueHeld(
                f"issue {issue.id} is held by an editor: not sent; 'newsletter approve --issue {issue.id}' "
                "(or the console's Approve) lets it go"
            )
        digest = _digest(store, current)  # its stories read once, for the renders and the audience
        if digest is None:
            audience = Audience(frequencies_of(settings, current), version=current.version)
        else:
            sections = IssueSections.of(digest, settings)
            _render_missing(settings, store, current, digest, sections)
            audience = _audience(settings, store, current, digest, sections)
        try:
            return store.start_send(issue.id, audience)
        except AudienceChanged:
            continue
    raise NewsletterError(f"the audience of issue {issue.id} could not be fixed: editors kept changing it")

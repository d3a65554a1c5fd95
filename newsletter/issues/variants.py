"""An issue's audience and its renderings (SPEC 8): readers take some sections, daily or weekly.

An issue is rendered once for each set of sections its audience holds, never once per reader: a
reader's set is cut to the sections the issue has stories in, so most readers share a rendering,
and every reader who takes each of those sections gets the issue's own. The renderings are made
when the issue is built and, for any set that appeared since, when its audience is fixed; the
audience (delivery.claims.start_send) then names each reader's rendering once and for all."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Settings
from ..content.digest import Digest, assembled, narrowed
from ..db.models import Edition, Frequency, Issue, IssueStatus
from ..delivery.records import WHOLE_ISSUE, Audience, AudienceChanged
from ..errors import NewsletterError
from ..subscribers.rules import Choices, effective_sections
from .build import digest_story

if TYPE_CHECKING:
    from ..store import Store

__all__ = [
    "IssueSections",
    "audience_of",
    "fix_audience",
    "frequencies_of",
    "render_variant",
    "render_variants",
    "variant_keys",
]

TRIES = 5  # readers who keep choosing new sets while an audience is fixed: give up after this many


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
    them the issue has stories in (`present`), and whether it has stories of no offered section
    (in every reader's issue). A set of sections is spelled sorted, as it is stored (SectionSet)."""

    offered: tuple[str, ...]
    present: tuple[str, ...]
    universal: bool

    @classmethod
    def of(cls, digest: Digest, choices: Choices) -> IssueSections:
        told = {s.section for s in digest.stories}
        present = tuple(sorted(s for s in choices.sections if s in told))
        return cls(choices.sections, present, any(s not in choices.sections for s in told))

    def key_of(self, chosen: tuple[str, ...]) -> tuple[str, ...] | None:
        """The sections a reader's issue holds: `present` itself for the issue's own rendering;
        None when nothing in it is theirs (no mail)."""
        theirs = set(effective_sections(chosen, Choices(self.offered)))
        key = tuple(sorted(s for s in self.present if s in theirs))
        if not key and not self.universal:
            return None
        return key


def _digest(store: Store, issue: Issue) -> Digest | None:
    """The issue's stories as its digest told them; None for an issue without stories (one made
    by hand): every reader gets its own rendering."""
    items = [digest_story(item) for item in store.issue_items(issue)]
    return assembled(issue.issue_date, items, weekly=issue.edition is Edition.WEEKLY)


def render_variants(
    settings: Settings, store: Store, issue: Issue, *, also: Collection[tuple[str, ...]] = ()
) -> int:
    """Render the issue for each set of sections its audience holds now that has no rendering yet
    (and for the sets in `also`); returns how many renderings the issue has, its own included. A
    rendering of a version an editor has since changed is not stored (issues.edits)."""
    digest = _digest(store, issue)
    if digest is None:
        return 1
    sections = IssueSections.of(digest, Choices.of(settings))
    made = {v.sections for v in store.issue_variants(issue.id)}
    for key in variant_keys(settings, store, issue, sections, also=also):
        if key in made:
            continue
        found = render_variant(
            settings, issue.id, digest, sections, key, subject=issue.chosen_subject, intro=issue.intro
        )
        if found is not None:
            store.add_variant(issue.id, key, *found, version=issue.version)
    return 1 + len(store.issue_variants(issue.id))


def variant_keys(
    settings: Settings,
    store: Store,
    issue: Issue,
    sections: IssueSections,
    *,
    also: Collection[tuple[str, ...]] = (),
) -> list[tuple[str, ...]]:
    """The sets of sections the issue's audience holds (and `also`) that need a rendering of
    their own: every set but the issue's own."""
    held = store.audience_sections(frequencies_of(settings, issue))
    keys = {sections.key_of(chosen) for chosen in held} | set(also)
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
) -> tuple[tuple[str, str, str, str, int], str | None] | None:
    """The issue's rendering for one set of sections, with its editor's subject and intro:
    ((subject, preheader, html, text, story count), placeholders' key); None when nothing in
    it is theirs."""
    from ..content.render import render_issue

    part = narrowed(digest, key, sections.offered)
    if part is None:  # nothing of theirs: key_of said so already
        return None
    rendered = render_issue(part, settings, issue_id=issue_id, subject=subject, intro=intro)
    content = (rendered.subject, rendered.preheader, rendered.html, rendered.text, len(part.stories))
    return content, rendered.placeholders.key


def audience_of(settings: Settings, store: Store, issue: Issue) -> Audience:
    """The issue's audience as it stands: its frequencies, each reader's rendering by their sections."""
    digest = _digest(store, issue)
    if digest is None:
        return Audience(frequencies_of(settings, issue))
    sections = IssueSections.of(digest, Choices.of(settings))
    variants = {v.sections: v.id for v in store.issue_variants(issue.id)}
    return Audience(
        frequencies_of(settings, issue),
        sections.key_of,
        variants | {sections.present: WHOLE_ISSUE},
        version=issue.version,
    )


def fix_audience(settings: Settings, store: Store, issue: Issue) -> int:
    """Fix the issue's audience, once (a no-op when its send began before): render any set of
    sections that appeared since the build, then make the delivery rows. A reader who chooses a
    new set in between only means one more rendering and another try. Returns the rows made."""
    missing: list[tuple[str, ...]] = []
    for _ in range(TRIES):
        # read again each try: an editor's change (issues.edits) means other renderings
        current = store.get_issue(issue.id)
        if current is None or current.status is not IssueStatus.BUILT:
            return 0
        render_variants(settings, store, current, also=missing)
        try:
            return store.start_send(issue.id, audience_of(settings, store, current))
        except AudienceChanged as exc:
            missing = exc.missing
    raise NewsletterError(
        f"the audience of issue {issue.id} could not be fixed: readers kept choosing new sections "
        "(or editors kept changing it)"
    )

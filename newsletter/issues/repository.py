"""Issues: stored once per date with their stories, read for the archive and the reports, paused
and resumed; and the schedule's runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    delete,
    func,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..db import widths
from ..db.engine import Database
from ..db.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    DeliveryStatus,
    Edition,
    Issue,
    IssueEdit,
    IssueStatus,
    IssueVariant,
    ScheduledRun,
    Story,
    Subscriber,
)
from ..db.tallies import ACCEPTED, count_deliveries
from ..errors import NewsletterError, NotFoundError
from .records import EditNote, IssueCounts, Rewrite, SendBegun

__all__ = ["IssueRepository", "ScheduledRunRepository"]

# The bounce events an issue's counts show (a hard bounce is the delivery's own state, `bounced`).
COUNTED_EVENTS = (BounceKind.SOFT, BounceKind.COMPLAINT)

# Readers may see an issue on the web once it is on its way to them, and not while it is held back.
_IN_ARCHIVE = and_(Issue.status.in_([IssueStatus.SENDING, IssueStatus.SENT]), Issue.paused.is_(False))


class IssueRepository(Database):
    """Issues and what the reports count of them."""

    def create_issue(
        self,
        issue_date: date,
        *,
        edition: Edition = Edition.DAILY,
        story_ids: Sequence[int],
        items: Sequence[Sequence[int]] | None = None,
        content: Callable[[int], tuple[str, str, str, str]],
        placeholder_key: str | None,
        now: datetime,
    ) -> Issue | None:
        """Store an issue for a date and mark its stories used, in one transaction.

        `content(issue_id)` gives (subject, preheader, html, text) once the row has its id. It runs
        while the write lock is held, so it renders nothing: RenderedIssue.for_issue puts the id
        into an issue rendered before. `placeholder_key` is the key in its placeholders' names
        (RenderedIssue.placeholders). None when the date already has an issue of this edition
        (another builder won). A daily issue takes its stories (each is told by one daily issue at
        most); a weekly one retells stories of the week and takes none."""
        try:
            with self.write() as s:
                if s.scalar(_of_date(select(Issue.id), issue_date, edition)) is not None:
                    return None
                issue = Issue(
                    issue_date=issue_date,
                    edition=edition,
                    subject="",
                    html="",
                    text="",
                    story_count=len(items) if items is not None else len(story_ids),
                    items=[list(i) for i in items] if items is not None else None,
                    status=IssueStatus.BUILT,
                    created_at=now,
                    placeholder_key=placeholder_key,
                )
                s.add(issue)
                s.flush()
                issue.subject, issue.preheader, issue.html, issue.text = content(issue.id)
                if edition is not Edition.DAILY:
                    return issue
                taken = s.execute(
                    update(Story)
                    .where(Story.id.in_(story_ids), Story.issue_id.is_(None))
                    .values(issue_id=issue.id)
                )
                if taken.rowcount != len(story_ids):  # type: ignore[attr-defined]
                    raise NewsletterError("a story of this issue was taken by another issue meanwhile")
                return issue
        except IntegrityError:
            return None

    def issue_items(self, issue: Issue) -> list[list[Story]]:
        """The issue's items in reading order, each its face story first, then the other sources'
        stories of the same event. An issue built before items were kept: each story alone."""
        with self.read() as s:
            items = _readable(issue.items)
            if items is None:
                stories = s.scalars(select(Story).where(Story.issue_id == issue.id).order_by(Story.id))
                return [[story] for story in stories]
            ids = [i for item in items for i in item]
            by_id = {story.id: story for story in s.scalars(select(Story).where(Story.id.in_(ids)))}
            found = [[by_id[i] for i in item if i in by_id] for item in items]
            return [item for item in found if item]

    def get_issue(self, issue_id: int) -> Issue | None:
        if not 0 < issue_id < 2**63:  # an id typed by hand: no such issue, not an overflow
            return None
        with self.read() as s:
            return s.get(Issue, issue_id)

    def issue_for_date(self, issue_date: date, edition: Edition = Edition.DAILY) -> Issue | None:
        with self.read() as s:
            found: Issue | None = s.scalar(_of_date(select(Issue), issue_date, edition))
            return found

    def issues_of_date(self, issue_date: date) -> list[Issue]:
        """A date's issues, the daily one first."""
        with self.read() as s:
            found = s.scalars(select(Issue).where(Issue.issue_date == issue_date))
            return sorted(found, key=lambda i: list(Edition).index(i.edition))

    def add_variant(
        self,
        issue_id: int,
        sections: Sequence[str],
        content: tuple[str, str, str, str, int],
        key: str | None,
        *,
        version: int | None = None,
    ) -> None:
        """Store one rendering of an issue for a set of sections: `content` is (subject, preheader,
        html, text, story count), `key` its placeholders' key. A set already stored (another
        process rendered it first) is left as it was: both renderings tell the same stories. One
        rendered from a `version` an editor has since changed is not stored."""
        try:
            with self.write() as s:
                if (
                    version is not None
                    and s.scalar(select(Issue.version).where(Issue.id == issue_id)) != version
                ):
                    return
                found = s.scalar(
                    select(IssueVariant.id).where(
                        IssueVariant.issue_id == issue_id, IssueVariant.sections == tuple(sections)
                    )
                )
                if found is None:
                    s.add(_variant_row(issue_id, sections, content, key))
        except IntegrityError:
            pass

    def rewrite_issue(self, issue_id: int, *, version: int, rewrite: Rewrite, note: EditNote) -> bool:
        """Store an editor's change and its renderings, and log it, in one transaction that first
        checks the issue is still `built`: an edit and the start of its send (which moves it on in
        one transaction too) never both win. SendBegun when the send began; False, and nothing
        stored, when another edit changed it since `version` (the renderings are of the old)."""
        with self.write() as s:
            issue = self._editable(s, issue_id)
            if issue.version != version:
                return False
            issue.items, issue.dropped = rewrite.items, rewrite.dropped
            issue.chosen_subject, issue.intro = rewrite.chosen_subject, rewrite.intro
            issue.subject, issue.preheader, issue.html, issue.text = rewrite.rendered
            issue.placeholder_key, issue.story_count = rewrite.placeholder_key, len(rewrite.items)
            issue.version = version + 1
            s.execute(delete(IssueVariant).where(IssueVariant.issue_id == issue_id))
            s.add_all(_variant_row(issue_id, *variant) for variant in rewrite.variants)
            s.add(IssueEdit(issue_id=issue_id, **note._asdict()))
            return True

    def set_held(self, issue_id: int, held: bool, note: EditNote) -> bool:
        """Hold an issue (the scheduler and `run` do not send it) or approve it, and log it, once
        its send has not begun (else SendBegun); True if that changed anything."""
        with self.write() as s:
            issue = self._editable(s, issue_id)
            changed = issue.held != held
            issue.held = held
            if changed:  # a send about to begin at the version it read does not begin: it reads again
                issue.version += 1
            if changed or note.detail:
                s.add(IssueEdit(issue_id=issue_id, **note._asdict()))
            return changed

    def release_review_note(self, issue_id: int, note: int) -> None:
        """Give a claimed note back (no editor could take it yet): the next minute mails it."""
        with self.write() as s:
            s.execute(
                update(Issue)
                .where(Issue.id == issue_id, Issue.review_notes == note)
                .values(review_notes=note - 1)
            )

    def claim_review_note(self, issue_id: int, note: int) -> bool:
        """True for the one process that mails an issue's `note`th review note (1 or 2)."""
        with self.write() as s:
            claimed = s.execute(
                update(Issue)
                .where(Issue.id == issue_id, Issue.review_notes == note - 1)
                .values(review_notes=note)
            )
            return bool(claimed.rowcount)  # type: ignore[attr-defined]

    def approved_since_run(self, *, since: date) -> list[Issue]:
        """Built issues of recent dates that a scheduled run found held, since approved: their
        send time has passed, so they go now."""
        with self.read() as s:
            ran = select(ScheduledRun.issue_id).where(ScheduledRun.finished_at.is_not(None))
            q = select(Issue).where(
                Issue.status == IssueStatus.BUILT,
                Issue.held.is_(False),
                Issue.issue_date >= since,
                Issue.id.in_(ran),
            )
            return list(s.scalars(q.order_by(Issue.issue_date)))

    def issue_edits(self, issue_id: int) -> list[EditNote]:
        """An issue's edit log, newest first."""
        with self.read() as s:
            q = select(IssueEdit).where(IssueEdit.issue_id == issue_id).order_by(IssueEdit.id.desc())
            return [EditNote(e.who, e.action, e.detail, e.at) for e in s.scalars(q)]

    def stories_by_id(self, ids: Sequence[int]) -> dict[int, Story]:
        with self.read() as s:
            return {story.id: story for story in s.scalars(select(Story).where(Story.id.in_(ids)))}

    @staticmethod
    def _editable(s: Any, issue_id: int) -> Issue:
        """The issue, its row locked (PostgreSQL; SQLite's write lock is taken at BEGIN) and its
        send not begun."""
        issue: Issue | None = s.scalar(select(Issue).where(Issue.id == issue_id).with_for_update())
        if issue is None:
            raise NotFoundError(f"there is no issue {issue_id}")
        if issue.status is not IssueStatus.BUILT:
            raise SendBegun(f"issue {issue_id} is {issue.status}: its send has begun, so it is not changed")
        return issue

    def issue_variants(self, issue_id: int) -> list[IssueVariant]:
        with self.read() as s:
            q = select(IssueVariant).where(IssueVariant.issue_id == issue_id).order_by(IssueVariant.id)
            return list(s.scalars(q))

    def list_issues(self, *, limit: int = 100) -> list[Issue]:
        with self.read() as s:
            return list(
                s.scalars(select(Issue).order_by(Issue.issue_date.desc(), Issue.id.desc()).limit(limit))
            )

    def archived_issues(self, *, limit: int = 365) -> list[Issue]:
        """The public archive: issues whose send has begun and is not paused, newest first."""
        with self.read() as s:
            q = (
                select(Issue)
                .where(_IN_ARCHIVE)
                .order_by(Issue.issue_date.desc(), Issue.id.desc())
                .limit(limit)
            )
            return list(s.scalars(q))

    def archived_issue(self, issue_id: int) -> Issue | None:
        with self.read() as s:
            return s.scalar(select(Issue).where(Issue.id == issue_id, _IN_ARCHIVE))

    def latest_issue(self) -> Issue | None:
        with self.read() as s:
            return s.scalar(select(Issue).order_by(Issue.issue_date.desc(), Issue.id.desc()).limit(1))

    def issue_counts(self, issue_id: int | None = None, *, limit: int = 30) -> list[IssueCounts]:
        """Issues, newest first, with their deliveries counted by state (one aggregate query)."""
        with self.read() as s:
            q = select(Issue).order_by(Issue.issue_date.desc(), Issue.id.desc()).limit(limit)
            if issue_id is not None:
                q = select(Issue).where(Issue.id == issue_id)
            issues = list(s.scalars(q))
            ids = [i.id for i in issues]
            counts: dict[int, dict[str, int]] = {i: {} for i in ids}
            accepted: dict[int, int] = dict.fromkeys(ids, 0)
            events: dict[tuple[int, str], int] = {}
            unsubscribed: dict[int, int] = {}
            variants: dict[int, int] = {}
            if ids:
                frozen = {i.id: i.counts for i in issues if i.counts is not None}
                for iid, c in frozen.items():
                    accepted[iid] = c.get(ACCEPTED, 0)
                    counts[iid] = {k: v for k, v in c.items() if k != ACCEPTED}
                live = [i for i in ids if i not in frozen]
                if live:
                    live_counts, live_accepted = count_deliveries(s, live)
                    counts |= live_counts
                    accepted |= live_accepted
                for eid, kind, n in s.execute(
                    select(
                        BounceEvent.issue_id,
                        BounceEvent.kind,
                        func.count(func.distinct(BounceEvent.subscriber_id)),
                    )
                    .where(BounceEvent.issue_id.in_(ids), BounceEvent.kind.in_(COUNTED_EVENTS))
                    .group_by(BounceEvent.issue_id, BounceEvent.kind)
                ):
                    if eid is not None:
                        events[(eid, kind)] = n
                variants = dict(
                    s.execute(
                        select(IssueVariant.issue_id, func.count())
                        .where(IssueVariant.issue_id.in_(ids))
                        .group_by(IssueVariant.issue_id)
                    ).all()
                )
                unsubscribed = {
                    iid: n
                    for iid, n in s.execute(
                        select(Subscriber.unsubscribed_issue_id, func.count())
                        .where(Subscriber.unsubscribed_issue_id.in_(ids))
                        .group_by(Subscriber.unsubscribed_issue_id)
                    )
                    if iid is not None
                }
        return [
            IssueCounts(
                issue_id=i.id,
                issue_date=i.issue_date,
                subject=i.subject,
                status=i.status,
                story_count=i.story_count,
                created_at=i.created_at,
                sent_at=i.sent_at,
                deliveries={st.value: counts[i.id].get(st.value, 0) for st in DeliveryStatus},
                accepted=accepted[i.id],
                soft_bounced=events.get((i.id, BounceKind.SOFT), 0),
                complained=events.get((i.id, BounceKind.COMPLAINT), 0),
                unsubscribed=unsubscribed.get(i.id, 0),
                paused=i.paused,
                edition=i.edition.value,
                variants=variants.get(i.id, 0),
                held=i.held,
            )
            for i in issues
        ]

    def problem_deliveries(
        self, issue_id: int, *, after: int = 0, limit: int = 50
    ) -> list[tuple[int, str, str, int, str | None]]:
        """Failed, bounced and unknown deliveries of an issue with the server's replies, a page in
        subscriber order: (subscriber id, email, status, attempts, reply)."""
        # one index range per state, each read no further than a page: a single IN over the states
        # would walk the issue's whole primary key in subscriber order (a million rows mid-send)
        states = [DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.UNKNOWN]
        pages = [
            select(Delivery.subscriber_id, Delivery.status, Delivery.attempts, Delivery.last_reply)
            .where(Delivery.issue_id == issue_id, Delivery.status == state, Delivery.subscriber_id > after)
            .order_by(Delivery.subscriber_id)
            .limit(limit)
            .subquery()
            for state in states
        ]
        page = union_all(*(select(p) for p in pages)).subquery()
        with self.read() as s:
            rows = s.execute(
                select(page.c.subscriber_id, Subscriber.email, *page.c["status", "attempts", "last_reply"])
                .join(Subscriber, Subscriber.id == page.c.subscriber_id)
                .order_by(page.c.subscriber_id)
                .limit(limit)
            )
            return [tuple(r) for r in rows]

    def unfinished_issues(self, *, since: date) -> list[Issue]:
        """Issues of recent dates whose send has begun but not ended (a crash, a stop, retries due)."""
        with self.read() as s:
            q = select(Issue).where(
                Issue.status == IssueStatus.SENDING, Issue.issue_date >= since, Issue.paused.is_(False)
            )
            return list(s.scalars(q.order_by(Issue.issue_date)))

    def set_paused(self, issue_id: int, paused: bool) -> bool:
        """Pause or resume an issue's send; True if that changed anything."""
        with self.write() as s:
            result = s.execute(
                update(Issue).where(Issue.id == issue_id, Issue.paused != paused).values(paused=paused)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]


class ScheduledRunRepository(Database):
    """One row per fire time of the schedule: which scheduler ran it, and how it ended."""

    def claim_scheduled_run(self, scheduled_for: datetime, *, host: str, pid: int, now: datetime) -> bool:
        """True for the one scheduler that gets to run this fire time."""
        try:
            with self.write() as s:
                if s.get(ScheduledRun, scheduled_for) is not None:
                    return False
                s.add(ScheduledRun(scheduled_for=scheduled_for, started_at=now, host=host, pid=pid))
                return True
        except IntegrityError:
            return False

    def finish_scheduled_run(
        self, scheduled_for: datetime, *, issue_id: int | None, outcome: str, now: datetime
    ) -> None:
        with self.write() as s:
            run = s.get(ScheduledRun, scheduled_for)
            if run is not None:
                run.finished_at, run.issue_id, run.outcome = now, issue_id, outcome[: widths.NOTE]

    def attach_scheduled_issue(self, scheduled_for: datetime, issue_id: int) -> None:
        """Note the issue a run is sending, so a resume after a crash can close the run."""
        with self.write() as s:
            s.execute(
                update(ScheduledRun)
                .where(ScheduledRun.scheduled_for == scheduled_for)
                .values(issue_id=issue_id)
            )

    def finish_scheduled_runs_of_issue(self, issue_id: int, *, outcome: str, now: datetime) -> None:
        """Close the runs cut short while sending this issue (a crash), now that a resume ended it."""
        with self.write() as s:
            s.execute(
                update(ScheduledRun)
                .where(ScheduledRun.issue_id == issue_id, ScheduledRun.finished_at.is_(None))
                .values(finished_at=now, outcome=outcome[: widths.NOTE])
            )

    def last_scheduled_run(self) -> ScheduledRun | None:
        with self.read() as s:
            return s.scalar(select(ScheduledRun).order_by(ScheduledRun.scheduled_for.desc()).limit(1))


def _variant_row(
    issue_id: int, sections: Sequence[str], content: tuple[str, str, str, str, int], key: str | None
) -> IssueVariant:
    subject, preheader, html, text, count = content
    return IssueVariant(
        issue_id=issue_id,
        sections=tuple(sections),
        subject=subject,
        preheader=preheader,
        html=html,
        text=text,
        story_count=count,
        placeholder_key=key,
    )


def _of_date(q: Select[Any], issue_date: date, edition: Edition) -> Select[Any]:
    return q.where(Issue.issue_date == issue_date, Issue.edition == edition)


def _readable(items: object) -> list[list[int]] | None:
    """The stored items when they are what a build writes (lists of story ids), else None: a
    database edited by hand shows each story alone rather than failing."""
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(item, list) and all(type(i) is int for i in item) for item in items):
        return None
    return items

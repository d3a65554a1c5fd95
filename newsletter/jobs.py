"""The main job's steps, shared by the command line, the scheduler and the web app:
gather the feeds, build the day's issue, send it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from .config import Settings, read_secret_key
from .db.models import DeliveryStatus, Issue, Story
from .delivery.compose import MessageTemplate, Recipient
from .delivery.engine import SendOptions, SendReport, send_issue
from .delivery.signing import signer_for
from .delivery.tokens import Tokens, verp_address
from .delivery.transport import Envelope, open_transport
from .digest import DigestStory, choose, issue_window
from .errors import NewsletterError
from .render import RenderedIssue, render_issue
from .store import Store

if TYPE_CHECKING:  # sources (httpx, feedparser) is imported by gather alone: every command starts a process
    from .sources import FeedResult, Limits

__all__ = [
    "GatherReport",
    "BuildOutcome",
    "gather",
    "build",
    "gather_and_build",
    "issue_template",
    "send",
    "today",
]


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
    from .sources import DEFAULT_LIMITS, Conditional, fetch_all

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
    new = 0
    for result in results:
        new += store.add_stories(result.stories, now=now)
        if result.source.is_remote:
            store.save_feed_state(
                result.source.url,
                etag=result.etag,
                last_modified=result.last_modified,
                error=result.error,
                now=now,
            )
    return GatherReport(results=results, new_stories=new)


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
    candidates = [_item(s) for s in store.unused_stories(since=since, until=until)]
    digest = choose(
        candidates,
        issue_date=issue_date,
        max_stories=d.max_stories,
        min_stories=d.min_stories,
        section_order=[s.section or "" for s in settings.sources],
    )
    if digest is None:
        return BuildOutcome(
            None,
            False,
            f"no issue for {issue_date}: {len(candidates)} new "
            f"{'story' if len(candidates) == 1 else 'stories'} in the last "
            f"{d.window_hours} hours, {d.min_stories} needed",
        )

    rendered = render_issue(digest, settings, issue_id=None)  # the slow part, before any lock is taken
    story_ids = [s.id for s in digest.stories]
    issue = store.create_issue(issue_date, story_ids=story_ids, render=rendered.for_issue, now=now)
    if issue is None:  # another builder stored this date's issue first
        issue = store.issue_for_date(issue_date)
        return BuildOutcome(issue, False, f"issue for {issue_date} was built by another process")
    return BuildOutcome(
        issue, True, f"built issue {issue.id} for {issue_date} with {issue.story_count} stories"
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


def _item(s: Story) -> DigestStory:
    return DigestStory(
        id=s.id,
        title=s.title,
        link=s.link,
        source=s.source,
        section=s.section,
        summary=s.summary,
        bullets=tuple(s.bullets or ()),
        author=s.author,
        image=s.image,
        published_at=s.published_at,
        fetched_at=s.fetched_at,
    )


def issue_template(settings: Settings, issue: Issue, *, subject_prefix: str = "") -> MessageTemplate:
    """The issue encoded once, signed per message when `[dkim]` is set (the key read here, once)."""
    n = settings.newsletter
    rendered = RenderedIssue(
        subject=issue.subject, preheader=issue.preheader, html=issue.html, text=issue.text
    )
    return MessageTemplate(
        rendered,
        issue_id=issue.id,
        newsletter_name=n.name,
        sender=n.sender_mailbox,
        reply_to=n.reply_to_mailbox,
        base_url=n.base_url,
        subject_prefix=subject_prefix,
        signer=signer_for(settings),
    )


def envelope_sender(settings: Settings, tokens: Tokens, issue_id: int) -> Callable[[int], str]:
    """Per subscriber: with `[bounces]`, a VERP address naming issue and subscriber (signed), so a
    bounce names its delivery whatever the remote server writes in it; else the plain sender."""
    return_path = settings.return_path
    if settings.bounces is None:
        return lambda _subscriber_id: return_path
    return lambda subscriber_id: verp_address(return_path, tokens.bounce(issue_id, subscriber_id))


def send_options(settings: Settings, **overrides: Any) -> SendOptions:
    d = settings.delivery
    smtp = d.transport == "smtp"
    connections = settings.smtp.connections if smtp else 1
    return SendOptions(
        connections=connections,
        processes=min(d.sender_processes(), connections) if smtp else 1,
        max_attempts=d.max_attempts,
        rate_per_second=d.rate_per_second,
        lost_reply=d.lost_reply,
        **overrides,
    )


def send(
    settings: Settings,
    store: Store,
    issue: Issue,
    *,
    resend_unknown: bool = False,
    options: SendOptions | None = None,
    on_result: Callable[[DeliveryStatus], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SendReport:
    """Send an issue over the configured transport, one connection per `[smtp] connections`."""
    if store.is_paused(issue.id):
        raise NewsletterError(
            f"issue {issue.id} is paused; 'newsletter resume --issue {issue.id}' continues its send"
        )
    options = options or send_options(settings)
    tokens = Tokens(read_secret_key(settings))
    return send_issue(
        store,
        lambda: open_transport(settings),
        issue_template(settings, issue),
        tokens,
        issue_id=issue.id,
        mail_from=envelope_sender(settings, tokens, issue.id),
        options=options,
        resend_unknown=resend_unknown,
        on_result=on_result,
        should_stop=should_stop,
    )


def send_test_copy(settings: Settings, store: Store, issue: Issue, address: str) -> None:
    """The issue exactly as subscribers get it, "[Test]" before the subject, to one address through
    the configured transport; no delivery is recorded. A subscriber's copy carries their own
    unsubscribe link; anyone else's a link that unsubscribes nobody."""
    template = issue_template(settings, issue, subject_prefix="[Test] ")
    tokens = Tokens(read_secret_key(settings))
    sub = store.get_subscriber(address)
    token = tokens.unsubscribe(sub.id) if sub else "test-copy"
    message = template.compose(Recipient(sub.id if sub else 0, address, sub.name if sub else None, token))
    transport = open_transport(settings)
    try:
        key = f"test/issue-{issue.id}-{int(time.time())}"
        result = transport.send(Envelope(settings.return_path, address, key), message)
    finally:
        transport.close()
    if result.status != DeliveryStatus.SENT:
        raise NewsletterError(f"the test copy to {address} was not accepted: {result.reply}")


def erase_outbox_copies(settings: Settings, subscriber_id: int, address: str) -> int:
    """An erased subscriber's messages still in the outbox folder (the demo transport): each issue's
    copy, the confirmation mails, and any test copy sent to the address (in any case)."""
    folder = settings.path(settings.delivery.outbox_dir)
    if not folder.is_dir():
        return 0
    found = {*folder.glob(f"*/{subscriber_id:08d}.eml"), *folder.glob(f"confirm/{subscriber_id}-*.eml")}
    needle = address.lower().encode()
    found |= {p for p in folder.glob("test/*.eml") if needle in p.read_bytes().lower()}
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)

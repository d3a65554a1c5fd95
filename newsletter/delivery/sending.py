"""Sending an issue as the configuration says: its message template (signed when `[dkim]` is set),
the envelope sender of each message, the send options; a test copy; and an erased subscriber's
copies in the outbox folder."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..config import Settings, read_secret_key
from ..content.render import Placeholders, RenderedIssue
from ..db.models import DeliveryStatus, Issue, IssueVariant
from ..errors import NewsletterError
from ..links import TEST_COPIES, outbox_copies_of, test_copy_key
from .compose import MessageTemplate, Recipient
from .engine import SendOptions, SendReport, send_issue
from .records import NO_ISSUE
from .signing import signer_for
from .tokens import Tokens, verp_address
from .transport import Envelope, open_transport

if TYPE_CHECKING:
    from ..store import Store

__all__ = [
    "NO_ISSUE",
    "envelope_sender",
    "erase_outbox_copies",
    "issue_template",
    "send",
    "send_options",
    "send_test_copy",
]


def issue_template(
    settings: Settings, issue: Issue, *, subject_prefix: str = "", rendering: IssueVariant | None = None
) -> MessageTemplate:
    """The issue encoded once (or one of its renderings for readers of some sections), signed per
    message when `[dkim]` is set (the key read here, once); each reader's preference link signed as
    it is composed."""
    n = settings.newsletter
    shown: Issue | IssueVariant = rendering or issue
    rendered = RenderedIssue(
        shown.subject,
        shown.preheader,
        html=shown.html,
        text=shown.text,
        placeholders=Placeholders.of(shown.placeholder_key),
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
        preferences_token=Tokens(read_secret_key(settings)).preferences,
    )


def envelope_sender(settings: Settings, tokens: Tokens, issue_id: int = NO_ISSUE) -> Callable[[int], str]:
    """The envelope sender of every mail to a subscriber, per subscriber: with `[bounces]`, a VERP
    address naming issue (or NO_ISSUE) and subscriber, signed, so a bounce names its subscriber
    whatever the remote server writes in it; else the plain sender."""
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
    held_ok: bool = True,
) -> SendReport:
    """Send an issue over the configured transport, one connection per `[smtp] connections`; a
    paused issue is refused. Its audience is fixed first (issues.variants), when its send begins:
    each reader of its edition with the rendering of their sections. `held_ok` False (the
    scheduler, `run`): an issue an editor holds is not sent (IssueHeld), even when the hold comes
    in the instant before its send begins."""
    from ..issues.variants import fix_audience

    options = options or send_options(settings)
    tokens = Tokens(read_secret_key(settings))
    added = 0 if store.is_paused(issue.id) else fix_audience(settings, store, issue, held_ok=held_ok)
    issue = store.get_issue(issue.id) or issue  # as its audience was fixed: an editor may have changed it
    variants = {v.id: issue_template(settings, issue, rendering=v) for v in store.issue_variants(issue.id)}
    report = send_issue(
        store,
        lambda: open_transport(settings),
        issue_template(settings, issue),
        tokens,
        issue_id=issue.id,
        variants=variants,
        mail_from=envelope_sender(settings, tokens, issue.id),
        options=options,
        resend_unknown=resend_unknown,
        on_result=on_result,
        should_stop=should_stop,
    )
    report.added += added
    report.variants = 1 + len(variants)
    return report


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
        key = test_copy_key(issue.id, datetime.now(UTC))
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
    found = {path for pattern in outbox_copies_of(subscriber_id) for path in folder.glob(pattern)}
    needle = address.lower().encode()
    found |= {p for p in folder.glob(TEST_COPIES) if needle in p.read_bytes().lower()}
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)

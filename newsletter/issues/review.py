"""The editor's hour on the schedule (SPEC 9): with `[schedule] review_minutes` the issue is built
that long before its send time and the editors get a "Review:" note (the console's link and the
issue's text); it goes out at the send time unless held. With `review_default = "hold"` it is held
from the start, and the editors get a second note when the send time passes unapproved."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from ..config import Settings, mailbox
from ..content.render import render_web
from ..db.models import DeliveryStatus, Issue, IssueStatus
from ..delivery.transport import Envelope, open_transport
from ..errors import NewsletterError, TransportError
from ..links import Links
from .edits import Action, hold_issue

if TYPE_CHECKING:
    from ..store import Store

__all__ = [
    "FIRST_NOTE",
    "SECOND_NOTE",
    "ReviewNoteError",
    "held_reason",
    "mail_review_note",
    "review_link",
    "send_review_note",
    "start_review",
]

FIRST_NOTE, SECOND_NOTE = 1, 2
SCHEDULER = "scheduler"  # who the edit log names for the scheduler's own hold


def review_link(settings: Settings, issue_id: int) -> str:
    return f"{Links(settings.newsletter.base_url).console()}issues/{issue_id}"


def held_reason(store: Store, issue_id: int) -> str:
    """What the scheduler and `run` say of an issue an editor holds; "" when it is not held."""
    issue = store.get_issue(issue_id)
    if issue is None or not issue.held or issue.status is not IssueStatus.BUILT:
        return ""
    return (
        f"issue {issue_id} is held by an editor: not sent; 'newsletter approve --issue {issue_id}' "
        "(or the console's Approve) lets it go"
    )


def start_review(settings: Settings, store: Store, issue: Issue, *, send_at: datetime, now: datetime) -> int:
    """An issue just built ahead of its send time: held when `review_default = "hold"`, and the
    editors mailed the first note, once among all schedulers. Returns the notes mailed."""
    if not store.claim_review_note(issue.id, FIRST_NOTE):
        return 0
    if settings.schedule.review_default == "hold":
        hold_issue(store, issue.id, Action.HOLD, who=SCHEDULER, now=now)
    return send_review_note(settings, store, issue.id, send_at=send_at, note=FIRST_NOTE, now=now)


def send_review_note(
    settings: Settings, store: Store, issue_id: int, *, send_at: datetime, note: int, now: datetime
) -> int:
    """Mail a note this process has claimed. When no editor could take it for a reason that may
    pass (the relay down, a 4xx), the claim goes back, so the next minute tries again; an address
    refused for good is named in the error, after every other editor has had the note."""
    try:
        return mail_review_note(settings, store, issue_id, send_at=send_at, note=note, now=now)
    except ReviewNoteError as exc:
        if exc.taken == 0 and exc.passing:
            store.release_review_note(issue_id, note)
        raise
    except TransportError:
        store.release_review_note(issue_id, note)
        raise


class ReviewNoteError(NewsletterError):
    """Editors who did not take a review note: `taken` others did; `passing`, whether a refusal
    may pass (a 4xx, a dropped session) rather than be final."""

    def __init__(self, message: str, *, taken: int, passing: bool) -> None:
        super().__init__(message)
        self.taken, self.passing = taken, passing


def mail_review_note(
    settings: Settings, store: Store, issue_id: int, *, send_at: datetime, note: int, now: datetime
) -> int:
    """Mail every editor the review note (`note` FIRST_NOTE or SECOND_NOTE) through the configured
    transport; returns how many took it. A refused address is the caller's error to log."""
    issue = store.get_issue(issue_id)
    if issue is None:
        return 0
    n = settings.newsletter
    local = send_at.astimezone(n.tz)
    link = review_link(settings, issue.id)
    if note == FIRST_NOTE:
        subject = f"Review: {issue.subject}"
        held = issue.held
        lead = (
            f"Issue {issue.id} of {issue.issue_date} is built and "
            + (
                "held: it is not sent until an editor approves it"
                if held
                else "goes out unless an editor holds it"
            )
            + f" (send time {local:%H:%M %Z})."
        )
    else:
        subject = f"Review: held, not sent: {issue.subject}"
        lead = (
            f"The send time of issue {issue.id} ({local:%H:%M %Z}) has passed and it is still held: "
            "nobody has had it. Approve it to send it now."
        )
    text = render_web(issue.text, issue.placeholder_key, settings, for_html=False)
    body = f"{lead}\n\nReview, edit, hold or approve it: {link}\n\n-- the issue as built --\n\n{text}"
    transport = open_transport(settings)
    taken, refused, passing = 0, [], False
    try:
        for i, editor in enumerate(n.editors):
            msg = EmailMessage(policy=policy.SMTP)
            msg["From"] = n.sender_mailbox
            msg["To"] = mailbox(None, editor)
            msg["Subject"] = " ".join(subject.split())[:250]  # one line: no CR or LF reaches the header
            msg["Date"] = format_datetime(now.astimezone(UTC))
            msg["Message-ID"] = make_msgid(domain=n.sender_mailbox.domain or None)
            msg["Auto-Submitted"] = "auto-generated"
            msg.set_content(body, cte="quoted-printable")
            key = f"review/issue-{issue.id}-note-{note}-{i}"  # the outbox file it lands in
            result = transport.send(Envelope(settings.return_path, editor, key), msg.as_bytes())
            if result.status == DeliveryStatus.SENT:
                taken += 1
                continue
            refused.append(f"{editor} ({result.reply})")
            passing = passing or result.status != DeliveryStatus.BOUNCED
    finally:
        transport.close()
    if refused:
        raise ReviewNoteError(
            f"the review note was not accepted for {', '.join(refused)}; {taken} editors have it",
            taken=taken,
            passing=passing,
        )
    return taken

"""Every public name the newsletter writes, spelled once: the site's URLs (in mail, on pages and in
the command line's answers), the outbox's file keys, and the List-Id and Feedback-ID headers.

The web app serves these paths; tests/test_links.py checks every URL built here against its
routes, and reads back what `unsubscribe_token` and `read_feedback_id` read."""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = [
    "OUTBOX_SUFFIX",
    "FeedbackId",
    "Links",
    "confirmation_key",
    "feedback_id",
    "issue_copy_key",
    "list_id",
    "outbox_copies_of",
    "read_feedback_id",
    "test_copy_key",
    "welcome_key",
    "TEST_COPIES",
]

_CONFIRM = "/confirm/"
_UNSUBSCRIBE = "/unsubscribe/"
_PREFERENCES = "/preferences/"
_ARCHIVE = "/archive"


class Links:
    """The site's public URLs under `base_url`, the address readers reach it at (a path after the
    host is kept: https://example.com/news/archive)."""

    __slots__ = ("base",)

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def signup(self) -> str:
        """The signup form: the site's front page, and the mail's List-Help."""
        return f"{self.base}/"

    def subscribe(self) -> str:
        """Where the signup form posts, the embeddable copy on another site too."""
        return f"{self.base}/subscribe"

    def confirm(self, token: str) -> str:
        return f"{self.base}{_CONFIRM}{token}"

    def unsubscribe(self, token: str) -> str:
        """A reader's one-click unsubscribe link (List-Unsubscribe, and the mail's footer)."""
        return f"{self.base}{_UNSUBSCRIBE}{token}"

    def preferences(self, token: str) -> str:
        """A reader's preference page ("Choose what you get"), in every mail and confirmation page."""
        return f"{self.base}{_PREFERENCES}{token}"

    def archive(self) -> str:
        return f"{self.base}{_ARCHIVE}"

    def archived_issue(self, issue_id: int | str) -> str:
        """An issue's web version; `issue_id` may be a placeholder's name, for an issue rendered
        before it has its id."""
        return f"{self.base}{_ARCHIVE}/{issue_id}"

    def console(self) -> str:
        return f"{self.base}/admin/"

    def unsubscribe_token(self, url: str) -> str | None:
        """The token of an unsubscribe link as `unsubscribe` writes it, read from a returned copy's
        List-Unsubscribe; None for any other URL. An empty `base_url` takes the link from any site."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.query or parts.fragment:
            return None
        if self.base and not url.startswith(self.unsubscribe("")):
            return None
        _, found, token = parts.path.rpartition(_UNSUBSCRIBE)
        if not found or not token or "/" in token:
            return None
        return unquote(token)


# -- the outbox: one file per message, named by its envelope's key ---------------------------------

OUTBOX_SUFFIX = ".eml"


def issue_copy_key(issue_id: int, subscriber_id: int) -> str:
    """One subscriber's copy of an issue: issue-3/00000042."""
    return f"issue-{issue_id}/{subscriber_id:08d}"


def confirmation_key(subscriber_id: int, sent_at: datetime) -> str:
    return f"confirm/{subscriber_id}-{int(sent_at.timestamp())}"


def welcome_key(subscriber_id: int, sent_at: datetime) -> str:
    return f"welcome/{subscriber_id}-{int(sent_at.timestamp())}"


def test_copy_key(issue_id: int, sent_at: datetime) -> str:
    """A [Test] copy of an issue, to whichever address the operator named."""
    return f"test/issue-{issue_id}-{int(sent_at.timestamp())}"


test_copy_key.__test__ = False  # type: ignore[attr-defined]  # pytest: a name, not a test


def outbox_copies_of(subscriber_id: int) -> tuple[str, ...]:
    """Glob patterns, under the outbox folder, of the files named for one subscriber: each issue's
    copy and the confirmation mails. A test copy is named for its issue (`test_copies`)."""
    return (
        f"issue-*/{subscriber_id:08d}{OUTBOX_SUFFIX}",
        f"confirm/{subscriber_id}-*{OUTBOX_SUFFIX}",
    )


# every test copy in the outbox folder
TEST_COPIES = f"test/*{OUTBOX_SUFFIX}"


# -- List-Id and Feedback-ID -------------------------------------------------------------------------

FEEDBACK_MAIL_TYPE = "digest"


def list_id(name: str, base_url: str) -> str:
    """The List-Id header (RFC 2919): "Morning Digest <morning-digest.news.example.com>"."""
    host = urlsplit(base_url).hostname or "localhost"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "digest"
    return f"{name} <{slug}.{host}>"


class FeedbackId(NamedTuple):
    """Gmail's feedback loop header, campaign:list:type:sender, so complaint rates come per issue.
    Nobody signs it: it names an issue to the mailbox provider, never a reader to us."""

    issue_id: int
    list_slug: str
    mail_type: str
    sender_domain: str

    def __str__(self) -> str:
        return f"{self.issue_id}:{self.list_slug}:{self.mail_type}:{self.sender_domain}"


def feedback_id(issue_id: int, list_header: str, sender_domain: str) -> str:
    """The Feedback-ID of an issue's mail; `list_header` is its List-Id (`list_id`)."""
    slug = list_header.rpartition("<")[2].rstrip(">").partition(".")[0]
    return str(FeedbackId(issue_id, slug, FEEDBACK_MAIL_TYPE, sender_domain))


def read_feedback_id(value: str) -> FeedbackId | None:
    """The fields of a Feedback-ID that `feedback_id` wrote, or None."""
    parts = value.strip().split(":")
    if len(parts) != 4 or not all(parts) or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    if len(parts[0]) > 18:  # no id of ours
        return None
    return FeedbackId(int(parts[0]), parts[1], parts[2], parts[3])

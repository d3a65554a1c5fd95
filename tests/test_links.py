"""newsletter.links: every URL it builds is a route of the web app, with the right view for each
method; what it writes it reads back (an unsubscribe link, the Feedback-ID); and the outbox's
names for one subscriber's files find their files and nobody else's."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from werkzeug.exceptions import MethodNotAllowed, NotFound

from newsletter import links
from newsletter.config import Settings
from newsletter.content.render import RenderedIssue
from newsletter.delivery.compose import MessageTemplate, Recipient
from newsletter.delivery.tokens import Tokens
from newsletter.links import FeedbackId, Links
from newsletter.store import Store
from newsletter.web import create_app

from .support.helpers import SECRET

TOKEN = Tokens(SECRET).unsubscribe(42)
CONFIRM = Tokens(SECRET).confirm(42)
CHOICES = Tokens(SECRET).preferences(42)

# builder: (its arguments, {method: the view that answers it}, the arguments the view gets)
ROUTES: dict[str, tuple[tuple[object, ...], dict[str, str], dict[str, object]]] = {
    "signup": ((), {"GET": "signup.form"}, {}),
    "subscribe": ((), {"POST": "signup.subscribe"}, {}),
    "confirm": ((CONFIRM,), {"GET": "signup.confirm_page", "POST": "signup.confirm"}, {"token": CONFIRM}),
    "unsubscribe": (
        (TOKEN,),
        {"GET": "unsubscribe.page", "POST": "unsubscribe.unsubscribe"},
        {"token": TOKEN},
    ),
    "preferences": ((CHOICES,), {"GET": "preferences.page", "POST": "preferences.save"}, {"token": CHOICES}),
    "archive": ((), {"GET": "archive.index"}, {}),
    "archived_issue": ((7,), {"GET": "archive.issue"}, {"issue_id": 7}),
    "console": ((), {"GET": "admin.dashboard"}, {}),
}


@pytest.fixture
def app(settings: Settings, sqlite_store: Store) -> Flask:
    return create_app(settings, store=sqlite_store)


def test_every_builder_is_checked() -> None:
    """A URL added to Links without a line in ROUTES fails here, not in a reader's mailbox."""
    builders = {n for n in vars(Links) if not n.startswith("_") and callable(getattr(Links, n))}
    assert builders - {"unsubscribe_token"} == set(ROUTES)


@pytest.mark.parametrize("base_url", ["https://news.example.com", "https://example.com/news/"])
def test_every_url_is_a_route_of_the_web_app_with_the_right_view_per_method(
    app: Flask, base_url: str
) -> None:
    """Under a site at the root or under a path (a proxy strips it before the app sees it)."""
    site = Links(base_url)
    prefix = urlsplit(site.base).path
    adapter = app.url_map.bind("news.example.com", url_scheme="https")
    for name, (args, views, view_args) in ROUTES.items():
        url = getattr(site, name)(*args)
        assert url.startswith(site.base + "/"), url
        path = urlsplit(url).path.removeprefix(prefix)
        for method, view in views.items():
            assert adapter.match(path, method=method) == (view, view_args), (name, method)
            assert adapter.build(view, view_args, method=method) == path  # and Flask writes the same
        for method in {"GET", "POST"} - set(views):  # no other view answers it
            with pytest.raises((MethodNotAllowed, NotFound)):
                adapter.match(path, method=method)


def test_the_pages_link_the_same_routes(app: Flask, sqlite_store: Store) -> None:
    """The site's own pages (url_for) and the mail's links (Links) lead to the same paths."""
    client = app.test_client()
    site = Links("https://news.example.com")
    page = client.get(urlsplit(site.signup()).path).get_data(as_text=True)
    assert f'action="{urlsplit(site.subscribe()).path}"' in page
    assert f'href="{urlsplit(site.archive()).path}"' in page
    sub, _ = sqlite_store.add_subscriber("ann@example.com", None, now=datetime.now(UTC))
    unsubscribe = urlsplit(site.unsubscribe(Tokens(SECRET).unsubscribe(sub.id))).path
    answer = client.get(unsubscribe)
    assert answer.status_code == 200 and f'action="{unsubscribe}"' in answer.get_data(as_text=True)


def test_an_unsubscribe_link_reads_back_and_nothing_else_does() -> None:
    site = Links("https://news.example.com/")
    assert site.unsubscribe_token(site.unsubscribe(TOKEN)) == TOKEN
    assert Links("").unsubscribe_token(site.unsubscribe(TOKEN)) == TOKEN  # no base: any site's
    hostile = [
        "https://evil.example/unsubscribe/" + TOKEN,  # another site
        "https://news.example.com.evil.example/unsubscribe/" + TOKEN,
        "https://news.example.com@evil.example/unsubscribe/" + TOKEN,
        "javascript:alert(1)//news.example.com/unsubscribe/" + TOKEN,
        "mailto:x@news.example.com?subject=/unsubscribe/" + TOKEN,
        "https://news.example.com/unsubscribe/",  # no token
        "https://news.example.com/unsubscribe/a/b",  # not one path segment
        "https://news.example.com/unsubscribe/" + TOKEN + "?x=1",
        "https://news.example.com/unsubscribe/" + TOKEN + "#top",
        "https://news.example.com/archive/7",
        "",
        "\x00",
    ]
    for url in hostile:
        assert site.unsubscribe_token(url) is None, url


def test_the_mails_unsubscribe_link_is_what_the_bounce_reader_reads() -> None:
    """compose writes the link with Links; the bounce classifier reads it back with Links."""
    from email.headerregistry import Address

    template = MessageTemplate(
        RenderedIssue("Subject", "pre", html="<p>hi</p>", text="hi"),
        issue_id=7,
        newsletter_name="Test Digest",
        sender=Address("Test Digest", "digest", "example.com"),
        reply_to=None,
        base_url="https://news.example.com",
    )
    msg = email.message_from_bytes(template.compose(Recipient(42, "ann@example.org", "Ann", TOKEN)))
    site = Links("https://news.example.com")
    assert site.unsubscribe_token(str(msg["List-Unsubscribe"]).strip("<>")) == TOKEN
    assert msg["List-Help"] == f"<{site.signup()}>" and msg["List-Archive"] == f"<{site.archive()}>"
    assert links.read_feedback_id(str(msg["Feedback-ID"])) == FeedbackId(
        7, "test-digest", "digest", "example.com"
    )


def test_the_feedback_id_round_trips_and_a_forged_one_reads_as_nothing() -> None:
    header = links.list_id("Morning: the Digest!", "https://news.example.com:8443/x")
    assert header == "Morning: the Digest! <morning-the-digest.news.example.com>"
    for issue_id in (1, 7, 2**31 - 1):
        written = links.feedback_id(issue_id, header, "mail.example.com")
        assert written == f"{issue_id}:morning-the-digest:digest:mail.example.com"
        assert links.read_feedback_id(written) == FeedbackId(
            issue_id, "morning-the-digest", "digest", "mail.example.com"
        )
        assert str(links.read_feedback_id(written)) == written
    for forged in (
        "",
        "7",
        "7:a:b",
        "7:a:b:c:d",
        "x:a:b:c",
        "-7:a:b:c",
        "7::b:c",
        "٧:a:b:c",
        "9" * 19 + ":a:b:c",
    ):
        assert links.read_feedback_id(forged) is None, forged


def test_a_subscribers_outbox_files_are_found_by_their_names_and_nobody_elses(tmp_path: Path) -> None:
    sent_at = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
    keys = {
        "mine": [
            links.issue_copy_key(3, 42),
            links.issue_copy_key(4, 42),
            links.confirmation_key(42, sent_at),
        ],
        "others": [
            links.issue_copy_key(3, 4242),
            links.issue_copy_key(42, 7),
            links.confirmation_key(421, sent_at),
            links.confirmation_key(4, sent_at),
        ],
        "tests": [links.test_copy_key(3, sent_at)],
    }
    for key in (k for group in keys.values() for k in group):
        path = tmp_path / f"{key}{links.OUTBOX_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = {p for pattern in links.outbox_copies_of(42) for p in tmp_path.glob(pattern)}
    assert found == {tmp_path / f"{k}{links.OUTBOX_SUFFIX}" for k in keys["mine"]}
    assert set(tmp_path.glob(links.TEST_COPIES)) == {
        tmp_path / f"{k}{links.OUTBOX_SUFFIX}" for k in keys["tests"]
    }


def test_a_send_writes_each_copy_where_the_outbox_names_say(settings: Settings) -> None:
    """The send engine (through the outbox transport) and the erasure agree on the names."""
    from newsletter.delivery.sending import send

    from .support.deliveries import issue_with_readers

    store = Store(settings.database_url)
    store.migrate()
    issue = store.get_issue(issue_with_readers(store, 3))
    assert issue is not None
    assert send(settings, store, issue).counts == {"sent": 3}
    folder = settings.path(settings.delivery.outbox_dir)
    for sub in store.iter_subscribers():
        found = {p for pattern in links.outbox_copies_of(sub.id) for p in folder.glob(pattern)}
        assert found == {folder / f"{links.issue_copy_key(issue.id, sub.id)}{links.OUTBOX_SUFFIX}"}
    store.close()

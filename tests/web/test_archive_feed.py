"""GET /archive.atom (SPEC 10): the archive's issues as Atom 1.0, read back by feedparser."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import feedparser
from flask.testing import FlaskClient

from newsletter.config import Settings
from newsletter.content.records import FetchedStory
from newsletter.store import Store
from newsletter.web import create_app

from ..support.deliveries import issue_of
from ..support.stories import wire_story

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
HOSTILE = "Council <script>alert(1)</script> & \x0bthe ]]> budget"


def fetched(n: int, title: str, summary: str = "") -> FetchedStory:
    return replace(wire_story(n, title, summary, now=NOW), link=f"https://wire.example/{n}?a=1&b=2")


def test_the_feed_has_the_newest_sent_issues_with_their_stories(settings: Settings) -> None:
    store = Store(settings.database_url)
    store.migrate()
    store.add_stories(
        [fetched(1, HOSTILE, "Less <b>than</b> 5 & more"), fetched(2, "Plain")], now=NOW, vectors={}
    )
    ids = sorted(s.id for s in store.unused_stories(since=NOW - timedelta(days=3), until=NOW))
    issues = [issue_of(store, day, [], f"Issue of day {day}") for day in range(24)]
    last = issue_of(store, 30, ids, "Big <news> & more")
    built_only = issue_of(store, 31, [], "Not sent yet")
    paused = issue_of(store, 29, [], "Paused one")
    for issue_id in [*issues, last, paused]:
        store.start_send(issue_id)
    store.set_paused(paused, True)
    client: FlaskClient = create_app(settings, store=store).test_client()

    response = client.get("/archive.atom")
    assert response.status_code == 200 and response.mimetype == "application/atom+xml"
    body = response.get_data(as_text=True)
    parsed = feedparser.parse(response.data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10" and parsed.feed.title == "Test Digest"
    entries = parsed.entries
    assert len(entries) == 20  # the 20 newest whose send has begun; neither built-only nor paused
    assert entries[0].title == "Big <news> & more"
    assert entries[0].link == f"https://news.example.com/archive/{last}"
    assert {e.title for e in entries}.isdisjoint({"Not sent yet", "Paused one", "Issue of day 0"})
    content = entries[0].content[0]
    assert content.type == "text/html"
    # the stories as HTML, the feed's words escaped within it (no markup of theirs survives)
    assert '<a href="https://wire.example/1?a=1&amp;b=2">' in content.value
    assert "Council &lt;script&gt;alert(1)&lt;/script&gt; &amp; the ]]&gt; budget" in content.value
    assert "Less &lt;b&gt;than&lt;/b&gt; 5 &amp; more" in content.value
    assert "<script" not in body and "/unsubscribe/" not in body and "__NL_" not in body
    assert entries[0].updated and entries[0].id == f"tag:news.example.com,2026-10-31:issue/{last}"
    again = feedparser.parse(client.get("/archive.atom").data)
    assert [e.id for e in again.entries] == [e.id for e in entries]  # stable ids
    assert len({e.id for e in entries}) == 20
    del built_only

    archive = client.get("/archive").get_data(as_text=True)
    assert (
        '<link rel="alternate" type="application/atom+xml" title="Test Digest" href="/archive.atom">'
        in archive
    )
    store.close()


def test_an_empty_archive_is_a_valid_feed(settings: Settings, sqlite_store: Store) -> None:
    store = Store(settings.database_url)
    store.migrate()
    parsed = feedparser.parse(create_app(settings, store=store).test_client().get("/archive.atom").data)
    store.close()
    assert parsed.bozo == 0 and parsed.entries == [] and parsed.feed.updated

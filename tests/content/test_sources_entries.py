"""A feed's entries: a hostile one is one broken feed (or one undated story), a big feed is read
linearly and capped by default to its newest entries."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.config import DEFAULT_MAX_ITEMS, SourceSettings, load_settings
from newsletter.content import sources
from newsletter.content.sources import fetch_all, parse_feed
from newsletter.errors import ConfigError
from newsletter.store import Store

from ..support.helpers import ROOT, FeedServer, Route, rss, write_config

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_a_character_reference_the_parser_cannot_take_is_one_broken_feed(feed_server: FeedServer) -> None:
    """&#99999999999999999999; and &#x110000; once raised out of feedparser and ended the whole
    gather: each is its one feed's error. &#xD800; (a lone surrogate) is read as U+FFFD, so one
    such item no longer costs its feed's other stories."""
    for n, ref in enumerate(["&#xD800;", "&#99999999999999999999;", "&#x110000;"]):
        feed_server.routes[f"/bad{n}"] = Route(rss([{"title": f"Bad {ref}", "link": "https://x.example/b"}]))
    feed_server.routes["/good"] = Route(rss([{"title": "Good news", "link": "https://y.example/g"}]))
    names = ["bad0", "bad1", "bad2", "good"]
    results = fetch_all([SourceSettings(n, feed_server.url(f"/{n}")) for n in names], base_dir=ROOT, now=NOW)
    assert [r.ok for r in results] == [True, False, False, True]
    assert [s.title for s in results[0].stories] == ["Bad \ufffd"]
    assert all("not a readable feed" in (r.error or "") for r in results[1:3])


def test_a_failure_no_rule_foresaw_is_one_broken_feed(
    feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard: whatever a parser bug raises for one feed, the others are still gathered."""
    real = sources.parse_feed

    def parse(body: bytes, source: SourceSettings, *, now: datetime) -> list[sources.FetchedStory]:
        if source.name == "bad":
            raise RuntimeError("a bug in a parser")
        return real(body, source, now=now)

    monkeypatch.setattr(sources, "parse_feed", parse)
    feed_server.routes["/bad"] = Route(rss([{"title": "Bad", "link": "https://x.example/b"}]))
    feed_server.routes["/good"] = Route(rss([{"title": "Good news", "link": "https://y.example/g"}]))
    srcs = [SourceSettings(n, feed_server.url(f"/{n}")) for n in ("bad", "good")]
    bad, good = fetch_all(srcs, base_dir=ROOT, now=NOW)
    assert bad.error == "bad: the feed could not be read (RuntimeError)" and not bad.stories
    assert good.ok and [s.title for s in good.stories] == ["Good news"]


def test_a_date_no_calendar_has_leaves_its_story_undated() -> None:
    """ "0000-00-00" once raised out of parse_feed and ended the whole gather."""
    body = rss([{"title": "Zero", "link": "https://x.example/z"}]).replace(
        b"</link>", b"</link><pubDate>0000-00-00</pubDate>"
    )
    for cap in (1, 200):  # read when choosing the newest, and when storing
        (story,) = parse_feed(body, SourceSettings("F", "https://f.example/rss", max_items=cap), now=NOW)
        assert story.title == "Zero" and story.published_at is None


def _feed(n: int, *, oldest_first: bool = False) -> bytes:
    """n entries a minute apart, newest first unless told otherwise; every fifth reuses a link."""
    items = [
        {
            "title": f"Story {i}",
            "link": f"https://x.example/{i - i % 5 if i % 5 == 1 else i}",
            "date": NOW - timedelta(minutes=i),
        }
        for i in range(n)
    ]
    return rss(items[::-1] if oldest_first else items)


def test_a_feed_is_capped_by_default_to_its_newest_entries(store: Store, tmp_path: Path) -> None:
    (tmp_path / "oldest-first.xml").write_bytes(_feed(5000, oldest_first=True))
    source = SourceSettings("Big", "oldest-first.xml")
    assert source.max_items == DEFAULT_MAX_ITEMS == 200
    (result,) = fetch_all([source], base_dir=tmp_path, now=NOW)
    assert store.add_stories(result.stories, now=NOW) == DEFAULT_MAX_ITEMS
    titles = [st.title for st in result.stories]
    assert titles == [f"Story {i}" for i in reversed(range(DEFAULT_MAX_ITEMS))]  # the newest, in feed order
    few = parse_feed(_feed(50), SourceSettings("Few", "https://f.example/rss", max_items=10), now=NOW)
    assert [st.title for st in few] == [f"Story {i}" for i in range(10)]


def test_parsing_compares_each_link_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the links a feed reuses is linear: once `links.count` compared every link with
    every other (40,000 entries took 12 s)."""
    compared = 0

    class Link(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    real = sources.canonical_link
    monkeypatch.setattr(sources, "canonical_link", lambda url: Link(real(url)))
    n = 1000
    stories = parse_feed(_feed(n), SourceSettings("F", "https://f.example/rss", max_items=n), now=NOW)
    assert len(stories) == n
    assert len({st.identity for st in stories}) == n  # the reused links still give distinct stories
    assert compared <= 4 * n  # it was n * n: 1,000,000


def test_a_long_author_is_cut_to_what_is_stored_and_a_long_name_or_url_refused(
    store: Store, tmp_path: Path, env: None
) -> None:
    """Once a 201-character author failed the feed's store on PostgreSQL (VARCHAR(200))."""
    body = rss([{"title": "Long", "link": "https://x.example/l", "author": "A" * 300}])
    stories = parse_feed(body, SourceSettings("F", "https://f.example/rss"), now=NOW)
    assert store.add_stories(stories, now=NOW) == 1
    assert store.unused_stories(since=NOW - timedelta(days=1), until=NOW)[0].author == "A" * 200
    for sources_, key in ([("N" * 201, "f.xml")], "sources[0].name"), ([("F", "f" * 1001)], "sources[0].url"):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_settings(write_config(tmp_path, sources=sources_))

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter.config import SourceSettings, load_settings
from newsletter.content.sources import Conditional, Limits, canonical_link, fetch_all, parse_feed
from newsletter.issues.build import gather
from newsletter.store import Store

from ..support.helpers import ROOT, FeedServer, Route, recent, rss, write_config

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
FAST = Limits(connect_seconds=2, read_seconds=1, total_seconds=3)


def src(url: str, name: str = "Feed", section: str | None = None) -> SourceSettings:
    return SourceSettings(name=name, url=url, section=section)


def test_rss2_atom_and_rss1_samples_parse() -> None:
    results = fetch_all(
        [
            src("samples/feeds/tech-news.xml", "Tech"),
            src("samples/feeds/in-depth.atom", "Deep"),
            src("samples/feeds/reviews.rdf", "Reviews"),
        ],
        base_dir=ROOT,
        now=NOW,
    )
    assert [r.error for r in results] == [None, None, None]
    tech, deep, reviews = (r.stories for r in results)
    assert len(tech) == 4 and len(deep) == 4 and len(reviews) == 2
    lead = tech[0]
    assert lead.author == "Priya Raman"
    assert lead.section == "Infrastructure"  # no section configured: the entry's first category
    assert lead.image == "https://news.example.com/images/grid-substation.jpg"
    assert lead.bullets[0].startswith("The operator will approve")
    assert deep[0].author == "Jonah Whitfield" and deep[0].section == "Top stories"
    assert reviews[0].link == "https://reviews.example.net/e-reader-lumen-7"


def test_identity_guid_then_link_then_hash_and_reused_links_stay_distinct() -> None:
    body = rss(
        [
            {"title": "A", "link": "https://x.example/a", "guid": "urn:x:1"},
            {"title": "B", "link": "https://x.example/b"},
            {"title": "C", "link": "https://x.example/same"},
            {"title": "D", "link": "https://x.example/same"},
            {"title": "E", "link": "https://x.example/e", "guid": "42"},
        ]
    )
    stories = parse_feed(body, src("https://feed.example/rss"), now=NOW)
    ids = [s.identity for s in stories]
    assert ids[0] == "urn:x:1"
    assert ids[1] == "https://x.example/b"
    assert ids[2].startswith("sha256:") and ids[3].startswith("sha256:") and ids[2] != ids[3]
    assert ids[4] == "https://feed.example/rss#42"  # a bare guid is unique only within its feed
    assert len(set(ids)) == 5


def test_the_same_story_in_two_feeds_is_stored_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    item = {"title": "Shared", "link": "https://x.example/shared?utm_source=feed#top"}
    one = parse_feed(rss([item]), src("https://a.example/rss", "A"), now=NOW)
    two = parse_feed(
        rss([{**item, "link": "https://X.example/shared"}]), src("https://b.example/rss", "B"), now=NOW
    )
    assert store.add_stories(one, now=NOW) == 1
    assert store.add_stories(two, now=NOW) == 0
    assert canonical_link("https://X.example/p?a=1&utm_medium=x#f") == "https://x.example/p?a=1"


def test_a_broken_feed_is_reported_and_the_others_still_gathered(feed_server: FeedServer) -> None:
    good = rss([{"title": "Good news", "link": "https://x.example/good", "date": recent()}])
    feed_server.routes["/good"] = Route(good)
    feed_server.routes["/500"] = Route(b"oops", status=500)
    feed_server.routes["/malformed"] = Route(b"<html><body>this is no feed</body>")
    feed_server.routes["/hang"] = Route(behaviour="hang")
    feed_server.routes["/big"] = Route(behaviour="big")
    names = ["good", "500", "404", "malformed", "hang", "big"]
    sources = [src(feed_server.url(f"/{n}"), n) for n in names]
    results = {r.source.name: r for r in fetch_all(sources, base_dir=ROOT, now=NOW, limits=FAST)}
    assert results["good"].ok and results["good"].stories[0].title == "Good news"
    assert "500" in (results["500"].error or "")
    assert "404" in (results["404"].error or "")
    assert "not" in (results["malformed"].error or "") and "feed" in (results["malformed"].error or "")
    assert "did not answer in time" in (results["hang"].error or "")
    assert "larger than 5 MB" in (results["big"].error or "")
    missing = fetch_all([src("no/such/file.xml", "missing")], base_dir=ROOT, now=NOW)[0]
    assert "cannot read" in (missing.error or "")


def test_conditional_requests_use_etag(feed_server: FeedServer, tmp_path: Path, env: None) -> None:
    feed_server.routes["/feed"] = Route(
        rss([{"title": "T", "link": "https://x.example/t"}]),
        headers={"ETag": '"v1"', "Last-Modified": "Tue, 24 Nov 2026 06:00:00 GMT"},
    )
    settings = load_settings(write_config(tmp_path, sources=[("F", feed_server.url("/feed"))]))
    store = Store(settings.database_url)
    store.migrate()
    first = gather(settings, store, now=NOW)
    assert first.new_stories == 1
    second = gather(settings, store, now=NOW)
    assert second.results[0].not_modified and second.new_stories == 0
    path, headers = feed_server.requests[-1]
    assert headers.get("If-None-Match") == '"v1"'
    assert headers.get("If-Modified-Since") == "Tue, 24 Nov 2026 06:00:00 GMT"
    assert fetch_all(
        [src(feed_server.url("/feed"))],
        base_dir=ROOT,
        now=NOW,
        conditionals={feed_server.url("/feed"): Conditional('"v1"', None)},
    )[0].not_modified


def test_a_date_in_the_future_is_no_date_and_a_fast_clock_is_now() -> None:
    """A feed that dates its story ahead of the fetch must not look the newest by it (digest.py
    ranks an undated story after dated ones); a server clock a few minutes fast is forgiven."""
    body = rss(
        [
            {"title": "Later", "link": "https://x.example/l", "date": datetime(2030, 1, 1, tzinfo=UTC)},
            {"title": "Skewed", "link": "https://x.example/s", "date": NOW + timedelta(minutes=5)},
            {"title": "Undated", "link": "https://x.example/u"},
        ]
    )
    later, skewed, undated = parse_feed(body, src("https://f.example/"), now=NOW)
    assert later.published_at is None
    assert skewed.published_at == NOW
    assert undated.published_at is None


def test_a_gzip_bomb_is_stopped_at_the_cap_as_it_unpacks(feed_server: FeedServer) -> None:
    """Content-Encoding: gzip, gzip; under 1 KB on the wire, 400 MB unpacked. The cap counts
    unpacked bytes as they are made, so memory never holds more than the cap."""
    import tracemalloc

    from ..support.helpers import gzip_bomb

    assert len(gzip_bomb()) < 1024
    feed_server.routes["/bomb"] = Route(behaviour="bomb")
    tracemalloc.start()
    try:
        (result,) = fetch_all(
            [src(feed_server.url("/bomb"), "bomb")], base_dir=Path("."), now=NOW, limits=FAST
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than 5 MB" in (result.error or ""), result.error
    assert peak < 40 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"

    # an honest compressed feed still reads: gzip, a zlib stream, raw deflate, and gzip twice
    import gzip
    import zlib

    feed = rss([{"title": "Packed", "link": "https://e.example/p"}])
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = {
        "gzip": gzip.compress(feed),
        "deflate": zlib.compress(feed),
        "raw": raw.compress(feed) + raw.flush(),
        "twice": gzip.compress(gzip.compress(feed)),
    }
    encodings = {"gzip": "gzip", "deflate": "deflate", "raw": "deflate", "twice": "gzip, gzip"}
    for name, body in packed.items():
        feed_server.routes[f"/{name}"] = Route(body=body, headers={"Content-Encoding": encodings[name]})
    feed_server.routes["/br"] = Route(body=b"xx", headers={"Content-Encoding": "br"})
    results = fetch_all(
        [src(feed_server.url(f"/{n}"), n) for n in [*packed, "br"]], base_dir=Path("."), now=NOW, limits=FAST
    )
    assert [r.stories[0].title if r.ok else r.error for r in results[:4]] == ["Packed"] * 4
    assert "content encoding this reader did not ask for (br)" in (results[4].error or "")


def test_one_deadline_covers_the_whole_request_headers_included(feed_server: FeedServer) -> None:
    """A server that sends its headers one byte every half second is cut off at the total deadline,
    and a good feed beside it is still gathered."""
    feed_server.routes["/drip"] = Route(behaviour="drip")
    feed_server.routes["/good"] = Route(body=rss([{"title": "Fine", "link": "https://e.example/1"}]))
    started = time.monotonic()
    drip, good = fetch_all(
        [src(feed_server.url("/drip"), "drip"), src(feed_server.url("/good"), "good")],
        base_dir=Path("."),
        now=NOW,
        limits=Limits(connect_seconds=2, read_seconds=1, total_seconds=2),
    )
    elapsed = time.monotonic() - started
    assert "took longer than 2 seconds" in (drip.error or ""), drip.error
    assert elapsed < 4, elapsed
    assert good.ok and [s.title for s in good.stories] == ["Fine"]

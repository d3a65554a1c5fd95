"""Found by an outside attack on SPEC 10, kept as regressions: hostile feed text through gather, build
(daily and weekly edition), send, then /archive.atom read by feedparser and by a strict XML parser."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from xml.etree import ElementTree

import feedparser

from newsletter.config import load_settings
from newsletter.store import Store
from newsletter.web import create_app

from ..support.helpers import FeedServer, Route, recent, run_cli, write_config

HOSTILE = [
    "Close ]]> the CDATA <![CDATA[ x ]]> & <b>bold</b>",
    "Control &#x1;&#x8;&#xB;&#xC;&#x1F; chars",
    "Nonchars &#xFFFE;&#xFFFF;&#x7F;&#x85; and NUL &#x0;",
    "Astral \U0001f600 ok &#x10FFFF;",
    "Huge " + "A" * 200_000,
    "Token placeholder __NL_UNSUBSCRIBE_URL__ {{ unsubscribe_url }}",
]


def _rss(hostile: list[str] = HOSTILE) -> bytes:
    items = []
    for i, title in enumerate(hostile):
        items.append(
            f"<item><title>{title}</title><link>https://wire.example/{i}?a=1&amp;b=2</link>"
            f"<guid>g{i}</guid><description><![CDATA[summary {i} <script>x()</script> ]]]]><![CDATA[> "
            f"]]></description><pubDate>{recent(i + 1).strftime('%a, %d %b %Y %H:%M:%S +0000')}"
            "</pubDate></item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>T</title>'
        "<link>https://example.com/</link><description>t</description>" + "".join(items) + "</channel></rss>"
    ).encode()


def test_hostile_titles_make_a_well_formed_archive_feed(
    tmp_path: Path, feed_server: FeedServer, env: None
) -> None:
    feed_server.routes["/f"] = Route(_rss())
    today = dt.datetime.now(dt.UTC).strftime("%A").lower()
    config = write_config(
        tmp_path,
        sources=[("Hostile", feed_server.url("/f"))],
        extra=f'[digest]\nweekly_day = "{today}"\n',
    )
    run_cli(config, "init")
    run_cli(config, "subscribers", "add", "reader@example.com")
    out = run_cli(config, "run", check=False)
    assert out.returncode == 0, out.stderr
    settings = load_settings(config)
    store = Store(settings.database_url)
    client = create_app(settings, store=store).test_client()
    response = client.get("/archive.atom")
    assert response.status_code == 200, response.data[:2000]
    parsed = feedparser.parse(response.data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    ElementTree.fromstring(response.data)  # strict XML 1.0
    body = response.get_data(as_text=True)
    assert "__NL_" not in body and "/unsubscribe/" not in body and "/preferences/" not in body
    assert len(parsed.entries) >= 1
    store.close()


def test_one_lone_surrogate_item_does_not_lose_the_whole_source(
    tmp_path: Path, feed_server: FeedServer, env: None
) -> None:
    feed_server.routes["/f"] = Route(_rss(["Fine story one", "Fine story two", "Bad &#xD800; one"]))
    config = write_config(tmp_path, sources=[("Hostile", feed_server.url("/f"))])
    run_cli(config, "init")
    out = run_cli(config, "gather", check=False)
    assert "3 new stories" in out.stdout and out.returncode == 0, out.stderr  # every item kept
    from newsletter.config import load_settings
    from newsletter.store import Store

    store = Store(load_settings(config).database_url)
    titles = sorted(
        s.title
        for s in store.unused_stories(
            since=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), until=dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
        )
    )
    assert titles == ["Bad \ufffd one", "Fine story one", "Fine story two"]  # the surrogate made U+FFFD
    store.close()

"""Found by an outside attack on SPEC 8, kept as regressions: hostile feeds and careless
operators against the sending side of sections."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.db.models import Frequency, Subscriber
from newsletter.delivery.sending import send
from newsletter.errors import ConfigError
from newsletter.issues.build import gather_and_build, today
from newsletter.store import Store
from newsletter.subscribers.records import Preferences

from ..support.helpers import FeedServer, Route, SmtpSink, recent, rss, write_config


def _cfg(
    tmp_path: Path, feeds: FeedServer, sink: SmtpSink, sources: list[tuple[str, str, str | None]]
) -> Settings:
    path = write_config(
        tmp_path,
        sources=sources,
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\nconnections = 1\n'
        "[digest]\nmin_stories = 1\n",
    )
    return load_settings(path)


def _one(title: str, hours: float, **more: str) -> Route:
    """A feed of one story."""
    item = {"title": title, "link": f"https://e.com/{abs(hash(title))}", "date": recent(hours)}
    return Route(rss([item | {"description": title + "."} | more]))


BUDGET = "Parliament passes a budget that raises pensions"
CYCLIST = "Cyclist wins the mountain stage after a late solo attack"


def _world_readers_mail(settings: Settings, sink: SmtpSink) -> bytes:
    """Today's issue built and sent; the mail of a reader who took the World section only."""
    store = Store(settings.database_url)
    store.migrate()
    world = _add(store, "world@example.com", "World")
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    send(settings, store, outcome.issue)
    (mail,) = sink.by_recipient()[world.email]
    return mail.data


def _text(raw: bytes) -> str:
    import email
    from email import policy

    msg = email.message_from_bytes(raw, policy=policy.default)
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr,no-any-return]


def _add(store: Store, address: str, *sections: str) -> Subscriber:
    sub, _ = store.add_subscriber(
        address, None, now=datetime.now(UTC), preferences=Preferences(tuple(sections), Frequency.DAILY)
    )
    return sub


def test_sectionless_feed_naming_a_section_as_its_category_reaches_every_reader(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    """SPEC 8: stories from a source without a `section` are in every reader's issue. A feed
    (no section configured) whose items carry <category>Sport</category> lands in "Sport"."""
    feed_server.routes["/world"] = _one(BUDGET, 1)
    feed_server.routes["/sport"] = _one(CYCLIST, 2)
    feed_server.routes["/alerts"] = _one(
        "Road closures for the marathon on Sunday morning", 3, category="Sport"
    )
    settings = _cfg(
        tmp_path,
        feed_server,
        smtp_sink,
        [
            ("World Desk", feed_server.url("/world"), "World"),
            ("Sport Desk", feed_server.url("/sport"), "Sport"),
            ("Alerts", feed_server.url("/alerts"), None),
        ],
    )
    mail = _world_readers_mail(settings, smtp_sink)
    assert "Road closures for the marathon" in _text(mail)  # the sectionless source's story


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ("Long " + "x" * 250, "at most 200 characters"),  # stories keep 200: it could never be chosen
        (" Padded ", "must not begin or end with blanks"),  # posted back stripped: never chosen
        ("World;World", "must not be other sections joined"),  # a CSV cell: this, or World?
        ("World, World", "must not be other sections joined"),  # the command line's separator
        ("Tab\there", "control character"),
    ],
)
def test_a_section_name_readers_could_not_choose_back_is_refused_by_name(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None, section: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape("'sources[1].section' ") + ".*" + re.escape(reason)):
        _cfg(
            tmp_path,
            feed_server,
            smtp_sink,
            [
                ("World Desk", feed_server.url("/world"), "World"),
                ("Odd Desk", feed_server.url("/odd"), section),
            ],
        )


def test_a_section_name_with_markup_and_quotes_is_escaped_and_chosen_like_any(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    odd = "Say \"hi\" <img src=x onerror=alert(1)> & 'x' \u65e5\u672c"
    feed_server.routes["/world"] = _one(BUDGET, 1)
    feed_server.routes["/odd"] = _one(CYCLIST, 2)
    path = write_config(
        tmp_path,
        sources=[],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\n'
        "[digest]\nmin_stories = 1\n",
    )
    text = path.read_text().split("\n[[sources]]")[0]
    text += f'\n[[sources]]\nname = "W"\nurl = "{feed_server.url("/world")}"\nsection = "World"\n'
    text += f"\n[[sources]]\nname = \"O\"\nurl = \"{feed_server.url('/odd')}\"\nsection = '''{odd}'''\n"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.sections == ("World", odd)
    store = Store(settings.database_url)
    store.migrate()
    reader = _add(store, "odd@example.com", odd)
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    send(settings, store, outcome.issue)
    (mail,) = smtp_sink.by_recipient()[reader.email]
    body = _text(mail.data)
    assert "Cyclist wins" in body and "Parliament passes" not in body
    assert b"<img src=x" not in mail.data and b"onerror=alert" not in mail.data.replace(b"=\r\n", b"")

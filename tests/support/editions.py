"""Sections and editions as their tests set them up: four sectioned desks and a source without a
section over local HTTP, readers with their choices, and what a received digest holds."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

from newsletter.config import WEEKDAYS, Settings, load_settings
from newsletter.db.models import Frequency, Subscriber
from newsletter.store import Store
from newsletter.subscribers.records import Preferences

from .helpers import FeedServer, Route, SmtpSink, recent, rss, write_config

# three sections a reader may choose, and a source without one (in every reader's issue)
WORLD = [
    ("Harbour cranes stand idle as dock workers strike over pay", 1),
    ("Parliament passes a budget that raises pensions", 3),
]


SPORT = [
    ("Cyclist wins the mountain stage after a late solo attack", 2),
    ("Tennis final postponed by rain until Monday afternoon", 4),
]


TECH = [("Chip maker opens a second fabrication plant in the desert", 3)]


ALERTS = [("Road closures for the marathon on Sunday morning", 5)]


def story_items(stories: list[tuple[str, float]], prefix: str) -> list[dict[str, Any]]:
    return [
        {"title": t, "link": f"https://example.com/{prefix}{i}", "date": recent(h), "description": t + "."}
        for i, (t, h) in enumerate(stories)
    ]


def sectioned_config(
    tmp_path: Path, feeds: FeedServer, sink: SmtpSink, *, weekly_day: str = "", extra: str = ""
) -> Settings:
    feeds.routes["/world"] = Route(rss(story_items(WORLD, "w")))
    feeds.routes["/sport"] = Route(rss(story_items(SPORT, "s")))
    feeds.routes["/tech"] = Route(rss(story_items(TECH, "t")))
    feeds.routes["/culture"] = Route(rss([]))  # a section with nothing today
    feeds.routes["/alerts"] = Route(rss(story_items(ALERTS, "a")))
    desks = [(f"{n} Desk", feeds.url("/" + n.lower()), n) for n in ("World", "Sport", "Tech", "Culture")]
    path = write_config(
        tmp_path,
        sources=[*desks, ("Alerts", feeds.url("/alerts"), None)],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\nconnections = 2\n'
        f'[digest]\nweekly_day = "{weekly_day}"\nmin_stories = 1\n{extra}',
    )
    return load_settings(path)


def add(store: Store, address: str, *sections: str, frequency: Frequency = Frequency.DAILY) -> Subscriber:
    sub, _ = store.add_subscriber(
        address, None, now=datetime.now(UTC), preferences=Preferences(tuple(sections), frequency)
    )
    return sub


def titles(raw: bytes) -> tuple[str, str, list[str]]:
    """A received digest's subject, its lead's title (the first story of the text part) and every
    story title it holds, in order."""
    msg = email.message_from_bytes(raw, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    everything = [t for t, _ in WORLD + SPORT + TECH + ALERTS]
    found = sorted((text.index(t), t) for t in everything if t in text)
    lead = next(line for line in text.split("== TOP STORY ==", 1)[1].splitlines() if line.strip())
    return str(msg["Subject"]), lead.strip(), [t for _, t in found]


def week_of_stories(feeds: FeedServer) -> None:
    """A week: one event told by three desks five days ago (the week's widest), a few single
    stories spread over the days, and today's."""
    old = recent(24 * 5)
    big = [
        {
            "title": t,
            "link": f"https://example.com/big{i}",
            "date": old + timedelta(minutes=10 * i),
            "description": d,
        }
        for i, (t, d) in enumerate(
            [
                (
                    "Flood barrier fails as river bursts its banks in the old town",
                    "The river rose overnight.",
                ),
                ("River floods old town after barrier gives way", "Residents were moved to the school hall."),
                ("Old town under water as flood barrier breaks", "The barrier failed before dawn."),
            ]
        )
    ]
    days = [
        {
            "title": t,
            "link": f"https://example.com/d{i}",
            "date": recent(24 * (i + 1) + 3),
            "description": t + ".",
        }
        for i, t in enumerate(
            [
                "Museum reopens its east wing after a long restoration",
                "Ferry operator adds a night crossing for the summer",
                "Orchestra names a new principal conductor from Lisbon",
            ]
        )
    ]
    feeds.routes["/world"] = Route(rss([big[0], *story_items(WORLD, "w")]))
    feeds.routes["/sport"] = Route(rss([big[1], *story_items(SPORT, "s")]))
    feeds.routes["/tech"] = Route(rss([big[2], *days, *story_items(TECH, "t")]))


def sectioned_store(
    tmp_path: Path, feeds: FeedServer, sink: SmtpSink, **config: str
) -> tuple[Settings, Store]:
    """sectioned_config's settings and its migrated SQLite store."""
    settings = sectioned_config(tmp_path, feeds, sink, **config)
    store = Store(settings.database_url)
    store.migrate()
    return settings, store


def weekly_today(tmp_path: Path, feeds: FeedServer, sink: SmtpSink) -> tuple[Settings, Store]:
    """Today is the weekly day (at most 4 stories a week, a 24-hour daily window), a week of
    stories in the feeds, and the store."""
    day = WEEKDAYS[datetime.now(UTC).date().weekday()]
    settings, store = sectioned_store(
        tmp_path, feeds, sink, weekly_day=day, extra="weekly_max_stories = 4\nwindow_hours = 24\n"
    )
    week_of_stories(feeds)
    return settings, store

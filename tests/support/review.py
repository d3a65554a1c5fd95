"""The editor's hour as its tests set it up: a config with editors and a review, a scheduler with
its own clock, the issue built ahead and its note mailed."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

from newsletter.config import load_settings
from newsletter.db.models import Issue
from newsletter.schedule import Scheduler, trigger
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from .helpers import FeedServer, Route, SmtpSink, recent, rss, write_config

EDITOR = "editor@example.com"


READER = "reader@example.org"


def review_config(
    tmp_path: Path, feeds: FeedServer, sink: SmtpSink, *, review: str, editors: str = f'["{EDITOR}"]'
) -> Path:
    feeds.routes["/feed"] = Route(
        rss(
            [
                {
                    "title": f"Story number {i} of the day",
                    "link": f"https://example.com/{i}",
                    "date": recent(i + 1),
                }
                for i in range(3)
            ]
        )
    )
    text = write_config(
        tmp_path,
        sources=[("Feed", feeds.url("/feed"))],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n[schedule]\n{review}\n',
    )
    body = text.read_text().replace('timezone = "UTC"\n', f'timezone = "UTC"\neditors = {editors}\n')
    text.write_text(body)
    return text


def review_scheduler(config: Path, *, now: datetime, send_at: datetime) -> tuple[Scheduler, Store, list[str]]:
    """A scheduler whose cron fires at `send_at` each day and whose clock says `now`."""
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    store.import_subscribers([NewSubscriber(READER, None)], now=now)
    lines: list[str] = []
    when = trigger(f"{send_at.minute} {send_at.hour} * * *", settings.newsletter.tz)
    scheduler = Scheduler(
        settings, store, now=lambda: now, emit=lambda line, _f: lines.append(line), when=when
    )
    return scheduler, store, lines


def reviewed(
    tmp_path: Path, feeds: FeedServer, sink: SmtpSink, review: str
) -> tuple[Scheduler, Store, list[str], Issue, datetime]:
    """A scheduler 20 minutes before its send time, that has built the issue and mailed the note."""
    config = review_config(tmp_path, feeds, sink, review=review)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    send_at = now + timedelta(minutes=20)
    scheduler, store, lines = review_scheduler(config, now=now, send_at=send_at)
    scheduler.review_due()
    (issue,) = store.list_issues()
    return scheduler, store, lines, issue, send_at


def mails_to(sink: SmtpSink, to: str) -> list[Any]:
    return [email.message_from_bytes(m.data, policy=policy.default) for m in sink.by_recipient().get(to, [])]

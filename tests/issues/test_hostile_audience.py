"""Found by an outside attack on SPEC 8, kept as a regression: one reader who keeps choosing a
new set of sections while a send starts cannot keep its audience from being fixed."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path

from newsletter.config import load_settings
from newsletter.db.models import Frequency
from newsletter.delivery.sending import send
from newsletter.errors import NewsletterError
from newsletter.issues.build import gather_and_build, today
from newsletter.store import Store
from newsletter.subscribers.records import Preferences

from ..support.helpers import FeedServer, Route, SmtpSink, recent, rss, write_config

NAMES = ["World", "Sport", "Tech", "Arts", "Science", "Money", "Travel"]


def test_one_reader_cycling_section_sets_cannot_stop_the_send(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    for i, n in enumerate(NAMES):
        feed_server.routes[f"/{n}"] = Route(
            rss(
                [
                    {
                        "title": f"{n} story number {i} about an entirely separate matter {n * 2}",
                        "link": f"https://e.com/{n}",
                        "date": recent(i + 1),
                        "description": f"{n} text.",
                    }
                ]
            )
        )
    path = write_config(
        tmp_path,
        sources=[(f"{n} Desk", feed_server.url(f"/{n}"), n) for n in NAMES],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\n'
        "[digest]\nmin_stories = 1\n",
    )
    settings = load_settings(path)
    store = Store(settings.database_url)
    store.migrate()
    for i in range(20):
        store.add_subscriber(f"r{i}@example.com", None, now=datetime.now(UTC))
    hostile, _ = store.add_subscriber("hostile@example.com", None, now=datetime.now(UTC))
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    issue = outcome.issue
    assert issue is not None and issue.story_count == len(NAMES)

    stop = threading.Event()
    sets = [c for k in range(1, len(NAMES)) for c in itertools.combinations(NAMES, k)]

    calls = [0]

    def keep_choosing() -> None:  # what POST /preferences/TOKEN in a loop does
        for chosen in itertools.cycle(sets):
            if stop.is_set():
                return
            store.set_preferences(hostile.id, Preferences(chosen, Frequency.DAILY), name=None)
            calls[0] += 1

    t = threading.Thread(target=keep_choosing)
    t.start()
    try:
        report = send(settings, store, issue)
        failure = None
    except NewsletterError as exc:
        failure = str(exc)
    finally:
        stop.set()
        t.join()
    # SPEC: the 21 readers get the issue; a reader's choice changes only what they get
    assert failure is None, failure
    assert report.counts.get("sent") == 21

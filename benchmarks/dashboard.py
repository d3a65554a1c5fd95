"""The console's pages at a large list: 1,000,000 subscribers and 100 issues on a SQLite file.

The data is made the way the product makes it where that is affordable (subscribers imported by
the store, sends started and finished by the store so finished issues freeze their counts) and by
set-based SQL where a million Python calls would only cost time (dates spread over a year, the
older issues' deliveries marked sent, readers' choices of sections and frequency: a tenth weekly,
a few sets of sections, one rare). The latest issue is mid-send: its million rows are counted
live on every request, the hardest case for the dashboard."""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from newsletter.config import load_settings
from newsletter.operators import hash_password
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber
from newsletter.web import create_app

PASSWORD = "bench password 123"


def build(folder: Path, subscribers: int, issues: int, old_issue_readers: int) -> Path:
    config = folder / "config.toml"
    config.write_text(
        '[newsletter]\nname = "Bench Daily"\nsender = "Bench <digest@example.com>"\n'
        'base_url = "http://127.0.0.1:8000"\npostal_address = "1 Bench Street"\n'
        f'[database]\nurl = "sqlite:///{folder / "big.db"}"\n'
        + "".join(
            f'[[sources]]\nname = "{s}"\nurl = "https://example.com/{s}.xml"\nsection = "{s}"\n'
            for s in ("Tech", "Science", "Business")
        )
    )
    store = Store(f"sqlite:///{folder / 'big.db'}")
    store.migrate()
    now = datetime.now(UTC)
    batch = 10_000
    for start in range(0, subscribers, batch):
        store.import_subscribers(
            [
                NewSubscriber(f"reader{i}@example.com", f"Reader {i}")
                for i in range(start, min(subscribers, start + batch))
            ],
            now=now,
        )
    with store.engine.begin() as conn:  # a year of signups; some left, some bounced
        conn.execute(
            text(
                "UPDATE subscribers SET created_at = datetime('now', '-' || (id % 365) || ' days'), "
                "confirmed_at = datetime('now', '-' || (id % 365) || ' days')"
            )
        )
        conn.execute(
            text(
                "UPDATE subscribers SET status = 'unsubscribed', "
                "unsubscribed_at = datetime('now', '-' || (id % 60) || ' days') WHERE id % 50 = 0"
            )
        )
        conn.execute(
            text(
                "UPDATE subscribers SET status = 'bounced', "
                "bounced_at = datetime('now', '-' || (id % 90) || ' days') "
                "WHERE id % 97 = 0 AND status = 'active'"
            )
        )
        # what readers chose (the triggers keep the tally as they would for each reader's save)
        conn.execute(text("UPDATE subscribers SET frequency = 'weekly' WHERE id % 10 = 0"))
        conn.execute(text("""UPDATE subscribers SET sections = '["Tech"]' WHERE id % 7 = 1"""))
        conn.execute(text("""UPDATE subscribers SET sections = '["Business","Science"]' WHERE id % 13 = 2"""))
        conn.execute(text("""UPDATE subscribers SET sections = '["Science"]' WHERE id % 9973 = 3"""))
    store.save_operator("bench", hash_password(PASSWORD), now=now)
    for n in range(issues):
        day = now.date().toordinal() - issues + n + 1
        issue = store.create_issue(
            datetime.fromordinal(day).date(),
            story_ids=[],
            content=lambda i: (f"Issue {i}", "", "<p>__NL_GREETING__</p>", "__NL_GREETING__"),
            placeholder_key=None,  # the fixed names
            now=now,
        )
        assert issue is not None
        last = n == issues - 1
        with store.engine.begin() as conn:
            # the older issues went to a sample of the list, so the file stays a few hundred MB
            limit = "" if last else f" AND id <= {old_issue_readers}"
            conn.execute(
                text(
                    "INSERT INTO deliveries (issue_id, subscriber_id, status, attempts) "
                    f"SELECT {issue.id}, id, 'pending', 0 FROM subscribers WHERE status = 'active'{limit}"
                )
            )
            conn.execute(text(f"UPDATE issues SET status = 'sending' WHERE id = {issue.id}"))
            done = " AND subscriber_id % 2 = 0" if last else ""  # the latest is half way through
            conn.execute(
                text(
                    "UPDATE deliveries SET status = 'sent', attempts = 1, sent_at = datetime('now') "
                    f"WHERE issue_id = {issue.id}{done}"
                )
            )
        if not last:
            assert store.finish_issue_if_done(issue.id, now=now)  # freezes its counts
    with store.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    store.close()
    return config


def timed_get(client, path: str, repeat: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    times = []
    status = 0
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - start)
        status = response.status_code
    return statistics.median(times), status


def measure(
    subscribers: int, issues: int = 100, old_issue_readers: int = 10_000
) -> list[tuple[str, str, str, str]]:
    import os

    os.environ.setdefault("NEWSLETTER_SECRET_KEY", "bench-secret-key-0123456789abcdef")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        config = build(Path(tmp), subscribers, issues, old_issue_readers)
        built = time.perf_counter() - started
        settings = load_settings(config)
        store = Store(settings.database_url)
        app = create_app(settings, store=store)
        client = app.test_client()
        page = client.get("/admin/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf
        assert (
            client.post(
                "/admin/login", data={"username": "bench", "password": PASSWORD, "csrf_token": csrf.group(1)}
            ).status_code
            == 302
        )
        size = (Path(tmp) / "big.db").stat().st_size / 1e6
        latest = store.list_issues()[0].id
        rows = []
        for label, path in [
            ("dashboard", "/admin/"),
            ("issue page (mid-send issue)", f"/admin/issues/{latest}"),
            ("subscribers, first page", "/admin/subscribers"),
            ("subscribers, a page deep in the list", f"/admin/subscribers?after={subscribers * 9 // 10}"),
            ("subscribers, search by address", "/admin/subscribers?q=reader4242"),
            ("subscribers, weekly readers", "/admin/subscribers?frequency=weekly"),
            ("subscribers, taking a section", "/admin/subscribers?section=Business"),
            (
                "subscribers, weekly, bounced, taking a section",
                "/admin/subscribers?frequency=weekly&status=bounced&section=Tech",
            ),
        ]:
            median, status = timed_get(client, path, 10)
            assert status == 200, (path, status)
            target = "< 200 ms" if label == "dashboard" else ""
            met = "" if not target else ("met" if median < 0.2 else "MISSED")
            rows.append(
                (
                    f"console {label}, {subscribers:,} subscribers",
                    f"{median * 1000:.0f} ms",
                    f"{target} {met}".strip(),
                    f"median of 10; {issues} issues; database {size:,.0f} MB built in {built:.0f} s",
                )
            )
        rows += _choice_counts(store, subscribers)
        store.close()
        return rows


def _choice_counts(store: Store, subscribers: int) -> list[tuple[str, str, str, str]]:
    """The dashboard's readers per section and frequency: read from the trigger-kept tally, against
    the same counted over the table, in the same run."""
    from sqlalchemy import func, select

    from newsletter.db.models import Subscriber, SubscriberStatus

    def tally() -> object:
        return store.preference_tally(status=SubscriberStatus.ACTIVE)

    def counted() -> object:
        with store.read() as s:
            return s.execute(
                select(Subscriber.frequency, Subscriber.sections, func.count())
                .where(Subscriber.status == SubscriberStatus.ACTIVE)
                .group_by(Subscriber.frequency, Subscriber.sections)
            ).all()

    times = {}
    for name, read in (("tally", tally), ("counted", counted)):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            read()
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
    return [
        (
            f"readers per section and frequency, {subscribers:,} subscribers",
            f"{times['tally'] * 1000:.1f} ms",
            "",
            f"from the trigger-kept tally; counted over the table: {times['counted'] * 1000:,.0f} ms",
        )
    ]


if __name__ == "__main__":
    import sys

    for row in measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000):
        print(" | ".join(row))

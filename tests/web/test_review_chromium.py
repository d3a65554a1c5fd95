"""SPEC 9 as an editor meets it: the scheduler builds the issue ahead and mails the note; the
editor opens its link in Chromium (Debian's), logs in, drops a story, writes an intro and
approves; the issue goes out at the cron time with the intro and without the story."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.schedule import Scheduler, trigger
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.helpers import (
    PASSWORD,
    FeedServer,
    Route,
    SmtpSink,
    free_port,
    recent,
    rss,
    run_cli,
    write_config,
)
from ..support.web import chromium, mail_text, needs_chromium, screenshots, serving

pytestmark = needs_chromium

TITLES = [
    "Bridge reopens after a year of repairs",
    "Wrong story: a rumour nobody checked",
    "Library extends its hours",
]


@pytest.fixture
def served(
    tmp_path: Path, smtp_sink: SmtpSink, feed_server: FeedServer, env: None
) -> Iterator[tuple[str, Path]]:
    feed_server.routes["/feed"] = Route(
        rss(
            [
                {"title": t, "link": f"https://example.com/{i}", "date": recent(i + 1)}
                for i, t in enumerate(TITLES)
            ]
        )
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path,
        sources=[("City Desk", feed_server.url("/feed"))],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\n'
        '[schedule]\nreview_minutes = 60\nreview_default = "hold"\n',
    )
    text = config.read_text().replace("https://news.example.com", url)
    config.write_text(
        text.replace('timezone = "UTC"\n', 'timezone = "UTC"\neditors = ["editor@example.com"]\n')
    )
    run_cli(config, "init")
    run_cli(config, "admin", "add-user", "ed", input=PASSWORD + "\n")
    with serving(config, port):
        yield url, config


def test_an_editor_opens_the_note_drops_a_story_writes_an_intro_and_approves_in_chromium(
    served: tuple[str, Path], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    url, config = served
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.import_subscribers([NewSubscriber("reader@example.org", None)], now=datetime.now(UTC))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    send_at = now + timedelta(minutes=45)
    when = trigger(f"{send_at.minute} {send_at.hour} * * *", settings.newsletter.tz)
    scheduler = Scheduler(settings, store, now=lambda: now, emit=lambda _line, _fields: None, when=when)
    scheduler.review_due()
    (note,) = smtp_sink.by_recipient()["editor@example.com"]
    body = mail_text(note)
    link = re.search(r"Review, edit, hold or approve it: (\S+)", body)
    assert link and link.group(1).startswith(url + "/admin/issues/")

    shots = screenshots(tmp_path, "screenshots")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(link.group(1))  # not logged in: the login page, then back to the link
        page.fill("input[name='username']", "ed")
        page.fill("input[name='password']", PASSWORD)
        page.click("button[type='submit']")
        page.wait_for_selector("#review")
        assert page.is_visible("#held") and page.is_visible("#approve")
        row = page.locator("#items tbody tr", has=page.get_by_role("link", name=TITLES[1], exact=True))
        row.locator("button[value='drop']").click()
        page.wait_for_selector("#dropped")
        assert TITLES[1] in page.inner_text("#dropped") and TITLES[1] not in page.inner_text("#items")
        page.fill("#intro", "Good morning from the desk: <b>two</b> lines before the news.")
        page.click("#save-text")
        page.wait_for_selector("#edits")
        preview = page.frame_locator("iframe.preview")
        assert "Good morning from the desk: <b>two</b> lines" in preview.locator(".editor-intro").inner_text()
        page.click("#approve")
        page.wait_for_selector("#hold")
        assert [r.split("\t")[1:3] for r in page.inner_text("#edits tbody").splitlines()] == [
            ["ed", "approve"],
            ["ed", "edit"],
            ["ed", "drop"],
            ["scheduler", "hold"],
        ]
        page.frame_locator("iframe.preview").locator(".editor-intro").wait_for()  # the preview, loaded
        page.screenshot(path=str(shots / "review-approved.png"), full_page=True)
    assert (shots / "review-approved.png").stat().st_size > 10_000

    scheduler.run_once(send_at)  # the cron time: approved, so it goes
    (mail,) = smtp_sink.by_recipient()["reader@example.org"]
    text = mail_text(mail)
    assert "Good morning from the desk: <b>two</b> lines" in text
    assert TITLES[1] not in text and TITLES[0] in text and TITLES[2] in text
    assert len(smtp_sink.by_recipient()["editor@example.com"]) == 1  # approved in time: no second note
    store.close()

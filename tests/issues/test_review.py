"""SPEC 9 on the schedule and the command line: with `review_minutes` the issue is built ahead and
the editors get a "Review:" note through the configured transport (the real SMTP sink); it goes out
at the cron time unless held; in hold mode nothing goes out unapproved and a second note says so;
`newsletter hold` and `approve`; `status` shows a held issue; `run` does not send it and says so."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError
from newsletter.issues.edits import Action, hold_issue
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.helpers import FeedServer, SmtpSink, run_cli
from ..support.review import EDITOR, READER, mails_to, review_config, review_scheduler, reviewed


def test_built_ahead_the_note_is_mailed_and_the_issue_goes_at_the_cron_time(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    config = review_config(tmp_path, feed_server, smtp_sink, review="review_minutes = 60")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    send_at = now + timedelta(minutes=50)
    early, store, _ = review_scheduler(config, now=now - timedelta(minutes=30), send_at=send_at)
    early.review_due()  # 80 minutes ahead: not yet
    assert store.list_issues() == [] and smtp_sink.messages == []

    scheduler, store, lines = review_scheduler(config, now=now, send_at=send_at)
    scheduler.review_due()
    (issue,) = store.list_issues()
    (note,) = mails_to(smtp_sink, EDITOR)
    assert note["Subject"] == f"Review: {issue.subject}"
    body = note.get_body(("plain",)).get_content()
    assert f"https://news.example.com/admin/issues/{issue.id}" in body
    assert "Story number 0 of the day" in body and "goes out unless an editor holds it" in body
    assert f"send time {send_at:%H:%M} UTC" in body
    assert mails_to(smtp_sink, READER) == [] and any(line.startswith("review ") for line in lines)
    scheduler.review_due()  # the next minute: built already, noted already
    assert len(mails_to(smtp_sink, EDITOR)) == 1

    scheduler.run_once(send_at)
    (got,) = mails_to(smtp_sink, READER)
    assert got["Subject"] == issue.subject
    assert store.get_issue(issue.id).status == "sent"  # type: ignore[union-attr]
    store.close()


def test_a_held_issue_is_not_sent_at_the_cron_time_and_goes_once_approved(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    scheduler, store, lines, issue, send_at = reviewed(
        tmp_path, feed_server, smtp_sink, "review_minutes = 60"
    )
    now = scheduler.now()
    hold_issue(store, issue.id, Action.HOLD, who="ann", now=now)
    scheduler.run_once(send_at)
    assert mails_to(smtp_sink, READER) == [] and store.get_issue(issue.id).status == "built"  # type: ignore[union-attr]
    assert any("is held by an editor: not sent" in line for line in lines)
    assert len(mails_to(smtp_sink, EDITOR)) == 1  # send mode: no second note
    scheduler.resume_unfinished()  # still held: nothing
    assert mails_to(smtp_sink, READER) == []
    hold_issue(store, issue.id, Action.APPROVE, who="ann", now=now)
    scheduler.resume_unfinished()  # approved after its time: it goes now
    assert len(mails_to(smtp_sink, READER)) == 1
    store.close()


def test_in_hold_mode_nothing_goes_unapproved_and_a_second_note_says_so(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    review = 'review_minutes = 30\nreview_default = "hold"'
    scheduler, store, _, issue, send_at = reviewed(tmp_path, feed_server, smtp_sink, review)
    config = tmp_path / "config.toml"
    assert store.get_issue(issue.id).held  # type: ignore[union-attr]
    assert [(e.who, e.action) for e in store.issue_edits(issue.id)] == [("scheduler", "hold")]
    (first,) = mails_to(smtp_sink, EDITOR)
    assert "held: it is not sent until an editor approves it" in first.get_body(("plain",)).get_content()
    scheduler.run_once(send_at)
    assert mails_to(smtp_sink, READER) == []
    first_again, second = mails_to(smtp_sink, EDITOR)
    assert second["Subject"] == f"Review: held, not sent: {issue.subject}"
    assert "has passed and it is still held" in second.get_body(("plain",)).get_content()
    scheduler.run_once(send_at + timedelta(days=1, minutes=-1))  # another run of the same date: no third note
    assert len(mails_to(smtp_sink, EDITOR)) == 2
    run_cli(config, "approve", "--issue", str(issue.id))
    scheduler.resume_unfinished()
    assert len(mails_to(smtp_sink, READER)) == 1
    store.close()


def test_hold_and_approve_on_the_command_line_and_run_says_it_holds(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    config = review_config(tmp_path, feed_server, smtp_sink, review="review_minutes = 0")
    run_cli(config, "init")
    settings: Settings = load_settings(config)
    store = Store(settings.database_url)
    store.import_subscribers([NewSubscriber(READER, None)], now=datetime.now(UTC))
    run_cli(config, "build")
    held = run_cli(config, "hold")
    assert "is now held" in held.stdout and "approve --issue" in held.stdout
    assert "was already held" in run_cli(config, "hold").stdout
    assert "built (held)" in run_cli(config, "status").stdout
    (row,) = json.loads(run_cli(config, "status", "--json").stdout)["issues"]
    assert row["held"] is True and row["status"] == "built"
    ran = run_cli(config, "run")
    assert "is held by an editor: not sent" in ran.stdout and smtp_sink.messages == []
    assert "is now approved" in run_cli(config, "approve").stdout
    run_cli(config, "run")
    assert len(mails_to(smtp_sink, READER)) == 1
    assert json.loads(run_cli(config, "status", "--json").stdout)["issues"][0]["held"] is False
    refused = run_cli(config, "hold", check=False)
    assert refused.returncode == 1 and "its send has begun" in refused.stderr
    log = [(e.action, e.who.endswith("(command line)")) for e in store.issue_edits(row["id"])]
    assert log == [("approve", True), ("hold", True)]
    store.close()


@pytest.mark.parametrize(
    ("review", "editors", "named"),
    [
        ("review_minutes = 30", "[]", "newsletter.editors"),
        ("review_minutes = -1", f'["{EDITOR}"]', "schedule.review_minutes"),
        ('review_default = "maybe"', f'["{EDITOR}"]', "schedule.review_default"),
        ("review_minutes = 30", '["not an address"]', "newsletter.editors[0]"),
        ("review_minutes = 30", '["a@example.com\\r\\nBcc: b@example.com"]', "newsletter.editors[0]"),
    ],
)
def test_the_review_keys_are_checked_and_named(
    tmp_path: Path,
    feed_server: FeedServer,
    smtp_sink: SmtpSink,
    env: None,
    review: str,
    editors: str,
    named: str,
) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{named}'")):
        load_settings(review_config(tmp_path, feed_server, smtp_sink, review=review, editors=editors))

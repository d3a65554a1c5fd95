"""Found by an outside attack on SPEC 9, kept as regressions: edits across readers of several section
sets: the variants follow."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from pathlib import Path

from newsletter.delivery.sending import send
from newsletter.issues.edits import Action, Change, edit_issue

from ..support.editions import SPORT, add, sectioned_store
from ..support.helpers import FeedServer, SmtpSink, run_cli


def test_dropping_a_sections_last_story_skips_its_readers_and_every_variant_follows(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    settings, store = sectioned_store(tmp_path, feed_server, smtp_sink)
    add(store, "all@example.com")
    add(store, "sport@example.com", "Sport")
    add(store, "tech@example.com", "Tech")
    add(store, "st@example.com", "Sport", "Tech")
    run_cli(tmp_path / "config.toml", "build")
    (issue,) = store.list_issues()
    now = datetime.now(UTC)
    for item in store.issue_items(issue):
        if item[0].section == "Sport":
            issue = edit_issue(settings, store, issue.id, Change(Action.DROP, item[0].id), who="ed", now=now)
    issue = edit_issue(
        settings, store, issue.id, Change(Action.EDIT, subject="S", intro="I"), who="ed", now=now
    )
    assert not any(t in issue.text for t, _ in SPORT)
    report = send(settings, store, issue)
    assert report.counts.get("sent", 0) >= 1
    got = smtp_sink.by_recipient()
    for who, msgs in got.items():
        msg = email.message_from_bytes(msgs[0].data, policy=policy.default)
        body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert msg["Subject"] == "S" and "I" in body and not any(t in body for t, _ in SPORT), who
    assert "all@example.com" in got and "tech@example.com" in got and "st@example.com" in got
    # the Sport reader still gets the sourceless Alerts: a mail with no Sport in it
    store.close()

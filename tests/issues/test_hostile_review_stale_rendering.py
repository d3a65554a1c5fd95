"""Found by an outside attack on SPEC 9, kept as regressions: an edit made after the sender read the
issue, before its send began, reaches every reader (the issue's own rendering is read again)."""

from __future__ import annotations

import email
import threading
from datetime import UTC, datetime
from email import policy
from pathlib import Path

from newsletter.config import Settings
from newsletter.db.models import Edition, Frequency, Issue
from newsletter.delivery.sending import send
from newsletter.issues.edits import Action, Change, edit_issue
from newsletter.schedule import run_scheduled
from newsletter.store import Store

from ..support.editions import add, sectioned_store, weekly_today
from ..support.helpers import FeedServer, Gate, SmtpSink, run_cli


def _subject_and_body(data: bytes) -> tuple[str, str]:
    msg = email.message_from_bytes(data, policy=policy.default)
    return str(msg["Subject"]), msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_an_edit_between_reading_the_issue_and_its_send_reaches_whole_issue_readers(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    """What the console's "Send now" thread, `send --issue` and the scheduler do: read the issue,
    then send() it. An editor's edit lands in between (it commits: the issue is still built)."""
    settings, store = sectioned_store(tmp_path, feed_server, smtp_sink)
    add(store, "all@example.com")  # every section: the issue's own rendering
    add(store, "sport@example.com", "Sport")  # a variant
    run_cli(tmp_path / "config.toml", "build")
    (read_by_sender,) = store.list_issues()
    items = store.issue_items(read_by_sender)
    victim = next(i[0] for i in items[1:] if i[0].section == "Sport")  # a Sport story, not the lead
    edited = edit_issue(
        settings, store, read_by_sender.id, Change(Action.DROP, victim.id), who="ed", now=datetime.now(UTC)
    )
    edited = _retitled(settings, store, edited.id, "EDITED SUBJECT", "Edited intro.")
    assert edited.version == read_by_sender.version + 2 and victim.title not in edited.text
    send(settings, store, read_by_sender)  # the sender's copy, read before the edits
    got = smtp_sink.by_recipient()
    all_subject, all_body = _subject_and_body(got["all@example.com"][0].data)
    sport_subject, sport_body = _subject_and_body(got["sport@example.com"][0].data)
    # the variant reader gets the edit ...
    assert sport_subject == "EDITED SUBJECT" and victim.title not in sport_body
    # ... the whole-issue reader should too (the audience was fixed at the edited version)
    assert (all_subject, victim.title in all_body, "Edited intro." in all_body) == (
        "EDITED SUBJECT",
        False,
        True,
    ), f"whole-issue reader got the pre-edit rendering: subject={all_subject!r}"
    store.close()


def test_weekly_edit_during_the_daily_send_of_a_scheduled_run_is_sent(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    """The scheduler reads both editions, sends the daily (minutes on a big list), then the weekly
    it read before: an editor's change to the (still built) weekly issue meanwhile is stored, shown
    in the console, logged - and not what the weekly readers get."""
    now = datetime.now(UTC)
    settings, store = weekly_today(tmp_path, feed_server, smtp_sink)
    add(store, "daily@example.com")
    add(store, "weekly@example.com", frequency=Frequency.WEEKLY)
    run_cli(tmp_path / "config.toml", "build")
    weekly = next(i for i in store.list_issues() if i.edition is Edition.WEEKLY)
    gate = Gate(after=0, applies=lambda _c, rcpts: "daily@example.com" in rcpts)
    smtp_sink.gate = gate
    run = threading.Thread(target=lambda: run_scheduled(settings, store, now, now=lambda: now))
    run.start()
    assert gate.reached.wait(30)  # the daily is on the wire; the weekly is still built
    assert store.get_issue(weekly.id).status == "built"  # type: ignore[union-attr]
    _retitled(settings, store, weekly.id, "WEEKLY EDITED", "From the desk.")
    gate.opened.set()
    run.join(60)
    subject, body = _subject_and_body(smtp_sink.by_recipient()["weekly@example.com"][0].data)
    assert store.issue_edits(weekly.id)[0].action == "edit"
    assert (subject, "From the desk." in body) == ("WEEKLY EDITED", True), subject
    store.close()


def _retitled(settings: Settings, store: Store, issue_id: int, subject: str, intro: str) -> Issue:
    """An editor's new subject and intro for the issue."""
    change = Change(Action.EDIT, subject=subject, intro=intro)
    return edit_issue(settings, store, issue_id, change, who="ed", now=datetime.now(UTC))

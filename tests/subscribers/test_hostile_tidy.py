"""Found by an outside attack on SPEC 10, kept as regressions: a pruned signup's confirm link never
confirms the stranger who took its id, and a broken confirm override neither mails nor uses up a
reminder. Real SMTP (aiosmtpd over TCP), a real SQLite file, the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter.config import load_settings
from newsletter.db.models import SubscriberStatus
from newsletter.web import create_app

from ..support.helpers import SmtpSink, run_cli
from ..support.tidy import signup, tidy_store
from ..support.web import confirm_link


def test_a_pruned_signups_live_link_never_confirms_the_next_strangers_signup(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    """SQLite reuses the highest rowid once it is deleted, and the confirm token names the id: a
    link signed before its subscriber's row was made is another signup's, and confirms nothing."""
    config, store = tidy_store(
        tmp_path, smtp_sink, "remind_after_hours = 0\nprune_pending_after_hours = 72\n"
    )
    settings = load_settings(config)
    t0 = datetime.now(UTC) - timedelta(hours=80)
    app = create_app(settings, store=store, now=lambda: t0)
    app.config["TESTING"] = True
    # A signs up through the form 80 hours ago and keeps the link (valid 7 days)
    assert app.test_client().post("/subscribe", data={"email": "a@example.com"}).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    link_a = confirm_link(smtp_sink, "a@example.com")
    a_id = store.get_subscriber("a@example.com").id  # type: ignore[union-attr]
    assert a_id == 1  # SQLite gives this id to the next signup once the row is gone

    pruned = json.loads(run_cli(config, "subscribers", "tidy", "--json").stdout)
    assert pruned["pruned"] == 1 and store.get_subscriber("a@example.com") is None

    # someone types a stranger's address into the form; the stranger never clicks anything
    # (A's link was signed by the real clock just now, not 80 hours ago: the stranger comes after it)
    now_app = create_app(settings, store=store, now=lambda: datetime.now(UTC) + timedelta(seconds=2))
    now_app.config["TESTING"] = True
    client = now_app.test_client()
    assert client.post("/subscribe", data={"email": "stranger@example.com"}).status_code == 200
    assert now_app.extensions["newsletter"].confirmations.wait_idle()
    stranger = store.get_subscriber("stranger@example.com")
    assert stranger is not None

    client.post(link_a)  # A's old link, still within its 7 days
    after = store.get_subscriber("stranger@example.com")
    store.close()
    assert after is not None and after.status == SubscriberStatus.PENDING, (
        f"A's link for a pruned signup confirmed the stranger (status {after and after.status})"
    )


def test_a_broken_confirm_override_stops_tidy_and_keeps_the_reminder(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    config, store = tidy_store(tmp_path, smtp_sink, "remind_after_hours = 48\n")
    due = signup(store, "due@example.com", SubscriberStatus.PENDING, mailed_hours_ago=50)
    mine = tmp_path / "templates/email/confirm.txt.j2"
    mine.parent.mkdir(parents=True)
    mine.write_text("Confirm:\n{{ confirm_link }}\n", encoding="utf-8")  # the upgrade trap

    broken = run_cli(config, "subscribers", "tidy", check=False)
    assert broken.returncode == 2 and f"{mine}:2:" in broken.stderr, "tidy does not check the templates"
    assert store.get_subscriber_by_id(due).reminded_at is None  # type: ignore[union-attr]


def test_the_reminder_taken_by_a_failed_render_is_given_back(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    config, store = tidy_store(tmp_path, smtp_sink, "remind_after_hours = 48\n")
    signup(store, "due@example.com", SubscriberStatus.PENDING, mailed_hours_ago=50)
    mine = tmp_path / "templates/email/confirm.txt.j2"
    mine.parent.mkdir(parents=True)
    mine.write_text("Confirm:\n{{ confirm_link }}\n", encoding="utf-8")
    run_cli(config, "subscribers", "tidy", check=False)
    mine.unlink()  # the operator mends it
    again = json.loads(run_cli(config, "subscribers", "tidy", "--json").stdout)
    store.close()
    assert again["reminded"] == 1 and len(smtp_sink.messages) == 1, (again, len(smtp_sink.messages))


def test_two_tidies_at_once_remind_each_signup_once(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> None:
    from ..support.helpers import start_cli

    config, store = tidy_store(tmp_path, smtp_sink, "remind_after_hours = 48\n")
    for i in range(40):
        signup(store, f"p{i}@example.com", SubscriberStatus.PENDING, mailed_hours_ago=50)
    procs = [start_cli(config, "subscribers", "tidy", "--json") for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    store.close()
    assert all(p.returncode == 0 for p in procs), outs
    counts = {k: len(v) for k, v in smtp_sink.by_recipient().items()}
    assert len(counts) == 40 and set(counts.values()) == {1}, counts

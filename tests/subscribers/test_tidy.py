"""A tidy list (SPEC 10): one welcome on confirming, one reminder to a pending signup, pending
signups pruned, and never a mail to an address that complained or bounced. Real SMTP (aiosmtpd
over TCP), a real SQLite file, the command line as a user runs it."""

from __future__ import annotations

import email
import json
import re
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

from newsletter.config import load_settings
from newsletter.db.models import SubscriberStatus
from newsletter.delivery.tokens import Tokens
from newsletter.schedule import Scheduler
from newsletter.web import create_app

from ..support.deliveries import issue_of
from ..support.helpers import SECRET, SmtpSink, run_cli
from ..support.tidy import signup, tidy_store
from ..support.web import confirm_link, smtp_app


def text_of(data: bytes) -> tuple[str, str]:
    msg = email.message_from_bytes(data, policy=policy.default)
    return str(msg["Subject"]), msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_reader_who_confirms_gets_one_welcome(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> None:
    now = datetime(2026, 11, 25, 7, tzinfo=UTC)
    app, store = smtp_app(tmp_path, smtp_sink, "", lambda: now)
    latest = issue_of(store, 54, [], "Yesterday")  # 2026-11-24
    store.start_send(latest)
    client = app.test_client()
    mailer = app.extensions["newsletter"].confirmations
    assert client.post("/subscribe", data={"email": "ada@example.com"}).status_code == 200
    assert mailer.wait_idle()
    link = confirm_link(smtp_sink, "ada@example.com")
    assert client.post(link).status_code == 200
    assert client.post(link).status_code == 200  # clicked twice: still one welcome
    assert mailer.wait_idle()
    mails = smtp_sink.by_recipient()["ada@example.com"]
    assert len(mails) == 2  # the confirmation, then the welcome
    subject, text = text_of(mails[1].data)
    assert subject == "Welcome to Test Digest"
    assert re.search(r"https://news\.example\.com/preferences/\S+", text)
    assert "https://news.example.com/archive\r\n" in text
    assert f"https://news.example.com/archive/{latest}" in text
    assert store.get_subscriber("ada@example.com").welcomed_at is not None  # type: ignore[union-attr]
    store.close()


def test_no_welcome_when_turned_off(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> None:
    app, store = smtp_app(tmp_path, smtp_sink, "[subscribers]\nwelcome = false\n", lambda: datetime.now(UTC))
    client = app.test_client()
    client.post("/subscribe", data={"email": "bo@example.com"})
    assert app.extensions["newsletter"].confirmations.wait_idle()
    assert client.post(confirm_link(smtp_sink, "bo@example.com")).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    assert len(smtp_sink.by_recipient()["bo@example.com"]) == 1
    store.close()


def test_tidy_reminds_once_prunes_and_never_mails_a_closed_address(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    config, store = tidy_store(tmp_path, smtp_sink)
    due = signup(store, "due@example.com", SubscriberStatus.PENDING, mailed_hours_ago=48)
    signup(store, "recent@example.com", SubscriberStatus.PENDING, mailed_hours_ago=47)
    signup(store, "stale@example.com", SubscriberStatus.PENDING, mailed_hours_ago=340)
    signup(store, "complained@example.com", SubscriberStatus.COMPLAINED, mailed_hours_ago=48)
    signup(store, "bounced@example.com", SubscriberStatus.BOUNCED, mailed_hours_ago=340)
    signup(store, "soft@example.com", SubscriberStatus.PENDING, mailed_hours_ago=48, bounce_count=1)

    dry = json.loads(run_cli(config, "subscribers", "tidy", "--dry-run", "--json").stdout)
    assert dry == {"reminded": 1, "pruned": 1, "not_sent": 0, "dry_run": True}
    assert smtp_sink.messages == [] and store.get_subscriber("stale@example.com") is not None

    done = json.loads(run_cli(config, "subscribers", "tidy", "--json").stdout)
    assert done == {"reminded": 1, "pruned": 1, "not_sent": 0, "dry_run": False}
    assert list(smtp_sink.by_recipient()) == ["due@example.com"]
    assert store.get_subscriber("stale@example.com") is None  # row, name and consent IP gone
    for closed in ("complained@example.com", "bounced@example.com"):
        assert store.get_subscriber(closed) is not None  # not pending: neither mailed nor pruned

    again = run_cli(config, "subscribers", "tidy")
    assert "reminded 0 pending signups; deleted 0" in again.stdout
    assert len(smtp_sink.messages) == 1  # never a second reminder

    subject, text = text_of(smtp_sink.messages[0].data)
    link = re.search(r"https://news\.example\.com(/confirm/\S+)", text)
    assert subject.startswith("Confirm your subscription") and link
    app = create_app(load_settings(config), store=store)
    assert app.test_client().post(link.group(1)).status_code == 200  # the fresh link confirms
    assert store.get_subscriber_by_id(due).status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    assert app.extensions["newsletter"].confirmations.wait_idle()
    store.close()


def test_a_former_reader_who_never_confirmed_again_keeps_the_row_without_the_new_signup(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    config, store = tidy_store(tmp_path, smtp_sink)
    former = signup(store, "former@example.com", SubscriberStatus.ACTIVE, mailed_hours_ago=400)
    store.start_send(issue_of(store, 0, [], "Old"))  # a delivery row names them
    long_ago = datetime.now(UTC) - timedelta(hours=400)
    store.unsubscribe(former, now=long_ago)
    store.request_subscription(  # signed up again, as the form does, and never confirmed
        "former@example.com",
        "New Name",
        ip="198.51.100.1",
        now=long_ago,
        resend_after=timedelta(hours=1),
        closed_resend_after=timedelta(days=30),
    )
    store.confirmation_sent(former, now=long_ago)
    assert store.get_subscriber_by_id(former).status == SubscriberStatus.PENDING  # type: ignore[union-attr]
    run_cli(config, "subscribers", "tidy")
    kept = store.get_subscriber_by_id(former)
    assert kept is not None and kept.status == SubscriberStatus.UNSUBSCRIBED
    assert kept.name is None and kept.consent_ip is None
    store.close()


def test_the_scheduler_tidies(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> None:
    config, store = tidy_store(tmp_path, smtp_sink)
    settings = load_settings(config)
    signup(store, "due@example.com", SubscriberStatus.PENDING, mailed_hours_ago=50)
    lines: list[str] = []
    scheduler = Scheduler(settings, store, emit=lambda line, fields: lines.append(line))
    scheduler.tidy_signups()
    scheduler.tidy_signups()
    assert lines == ["tidy reminded=1 pruned=0 not_sent=0"]
    assert list(smtp_sink.by_recipient()) == ["due@example.com"]
    assert Tokens(SECRET)  # the same key the command line signs with
    store.close()

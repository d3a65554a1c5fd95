"""The operator console through Flask's test client, on a real SQLite file, with mail over real SMTP
to the aiosmtpd fixture: every /admin route guarded, CSRF, login limits, the pages, pause and
resume of a real send, and erasure."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from newsletter.bounces.policy import BouncePolicy
from newsletter.bounces.records import FoundEvent
from newsletter.config import load_settings
from newsletter.operators import hash_password
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber
from newsletter.web import create_app

from ..support.helpers import (
    PASSWORD,
    Console,
    Gate,
    SmtpSink,
    log_in,
    run_cli,
    token,
    upload_csv,
    wait_for,
    write_config,
)


@pytest.fixture
def client(console: Console) -> FlaskClient:
    c = console.app.test_client()
    assert log_in(c) == 302
    return c


def _path(rule: str) -> str:
    return re.sub(r"<(?:int:)?[^>]+>", "1", rule)


def test_every_admin_route_needs_a_session(console: Console) -> None:
    rules = [r for r in console.app.url_map.iter_rules() if r.rule.startswith("/admin")]
    assert len(rules) >= 12  # the walk covers what is there, including routes added later
    anonymous = console.app.test_client()
    csrf = token(anonymous)  # a token of the anonymous session: CSRF passes, the login check must not
    for rule in rules:
        if rule.endpoint == "admin.login":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = anonymous.open(_path(rule.rule), method=method, data={"csrf_token": csrf})
            assert response.status_code in (302, 401), (rule.rule, method, response.status_code)
            if response.status_code == 302:
                assert response.headers["Location"].startswith("/admin/login"), rule.rule


def test_csrf_missing_or_wrong_is_400(client: FlaskClient, console: Console) -> None:
    assert client.post("/admin/issues/1/pause").status_code == 400
    assert client.post("/admin/issues/1/pause", data={"csrf_token": "forged"}).status_code == 400
    assert client.post("/admin/subscribers/1/erase", data={}).status_code == 400
    other = console.app.test_client()  # a token from another session is wrong here
    assert client.post("/admin/logout", data={"csrf_token": token(other)}).status_code == 400
    # the public forms stay open to other sites by design (embedded signup, RFC 8058 one-click)
    assert client.post("/subscribe", data={"email": "new@example.org"}).status_code == 200


def test_login_logout_and_the_limit_per_address(console: Console, caplog: pytest.LogCaptureFixture) -> None:
    c = console.app.test_client()
    token(c)
    before = c.get_cookie("newsletter_session")
    assert before is not None
    wrong = c.post("/admin/login", data={"username": "ed", "password": "nope", "csrf_token": token(c)})
    assert wrong.status_code == 200 and "do not match" in wrong.get_data(as_text=True)
    assert c.get("/admin/").status_code == 302
    assert log_in(c) == 302
    after = c.get_cookie("newsletter_session")
    assert after is not None and after.value != before.value  # a new session at login
    assert after.http_only and after.same_site == "Lax" and after.secure  # base_url is https here
    assert c.get("/admin/").status_code == 200
    assert c.post("/admin/logout", data={"csrf_token": token(c, "/admin/")}).status_code == 302
    assert c.get("/admin/").status_code == 302  # the session is over

    attacker = console.app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "192.0.2.9"  # another address than the login above
    with caplog.at_level(logging.WARNING, logger="newsletter.admin"):
        codes = [log_in(attacker, name="root", password=f"guess {i}") for i in range(11)]
        locked = log_in(attacker)  # even the right password, from this address, for 15 minutes
    assert codes[:10] == [200] * 10 and codes[10] == 429 and locked == 429
    assert any("10 failures within 15 minutes" in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_no_secure_flag_on_a_plain_http_site(tmp_path: Path, env: None) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("https://news.example.com", "http://127.0.0.1:8000"))
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    c = create_app(settings, store=store).test_client()
    assert log_in(c) == 302
    cookie = c.get_cookie("newsletter_session")
    assert cookie is not None and not cookie.secure and cookie.http_only  # a browser would drop it
    store.close()


def test_dashboard_issue_and_subscriber_pages(
    client: FlaskClient, console: Console, smtp_sink: SmtpSink
) -> None:
    console.store.import_subscribers(
        [NewSubscriber(f"r{i}@example.org", f"Reader {i}") for i in range(120)], now=datetime.now(UTC)
    )
    run_cli(console.config, "run")
    issue_id = console.store.list_issues()[0].id
    page = client.get("/admin/").get_data(as_text=True)
    assert "Next run:" in page and 'id="growth-chart"' in page and 'id="issues-chart"' in page
    assert f"#{issue_id}</a>" in page and "<td>120</td>" in page  # the issues table: 120 sent
    assert "chart-4.6.1.umd.min.js" in page and '"sent": [120]' in page
    issue = client.get(f"/admin/issues/{issue_id}").get_data(as_text=True)
    assert 'data-state="sent">120<' in issue and "sandbox" in issue and "Send a test to" in issue
    framed = client.get(f"/admin/issues/{issue_id}/html")
    assert framed.status_code == 200 and "frame-ancestors 'self'" in framed.headers["Content-Security-Policy"]
    assert client.get("/admin/").headers["X-Frame-Options"] == "DENY"

    sent = client.post(
        f"/admin/issues/{issue_id}/test",
        data={"email": "me@example.net", "csrf_token": token(client, "/admin/")},
    )
    assert sent.status_code == 302
    test_copy = smtp_sink.by_recipient()["me@example.net"][0].data
    assert b"[Test]" in test_copy

    first = client.get("/admin/subscribers").get_data(as_text=True)
    assert first.count("<tr>") == 51 and "r0@example.org" in first  # 50 rows and the header
    after = re.search(r'id="next-page" href="([^"]+)"', first)
    assert after is not None
    second = client.get(after.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert "r50@example.org" in second and "r0@example.org" not in second
    found = client.get("/admin/subscribers?q=r11").get_data(as_text=True)
    assert "r11@example.org" in found and "r110@example.org" in found and "r12@example.org" not in found
    by_name = client.get("/admin/subscribers?q=reader 7").get_data(as_text=True)
    assert "r7@example.org" in by_name and "r70@example.org" in by_name

    exported = client.get("/admin/subscribers/export.csv")
    rows = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
    assert exported.mimetype == "text/csv" and rows[0][0] == "email" and len(rows) == 121

    upload = b"email,name\nnew1@example.org,New One\nnot an address,Bad\nnew2@example.org,\n"
    imported = client.post(
        "/admin/subscribers/import",
        data={"file": (io.BytesIO(upload), "more.csv"), "csrf_token": token(client, "/admin/subscribers")},
        content_type="multipart/form-data",
    ).get_data(as_text=True)
    assert "2 added" in imported and "<td>3</td>" in imported  # line 3 is the bad one
    sub = console.store.get_subscriber("r5@example.org")
    assert sub is not None
    client.post(
        f"/admin/subscribers/{sub.id}/unsubscribe", data={"csrf_token": token(client, "/admin/subscribers")}
    )
    assert console.store.get_subscriber_by_id(sub.id).status == "unsubscribed"  # type: ignore[union-attr]


def test_the_console_import_skips_a_line_that_is_not_utf8_and_takes_the_rest(client: FlaskClient) -> None:
    upload = b"email,name\nok12@example.com,good\nok13@example.com,Zo\xeb\nok14@example.com,fine\n"
    imported = upload_csv(client, upload, "latin1.csv")
    assert "2 added" in imported and "<td>3</td><td>not UTF-8 text (byte 0xeb" in imported


def test_erase_removes_the_address_everywhere_and_keeps_the_counts(
    tmp_path: Path, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path)  # the outbox transport: its files hold addresses too
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    store.import_subscribers(
        [NewSubscriber("gone@example.org", "Gone Person"), NewSubscriber("stays@example.org", None)],
        now=datetime.now(UTC),
    )
    run_cli(config, "run")
    issue_id = store.list_issues()[0].id
    gone = store.get_subscriber("gone@example.org")
    assert gone is not None
    with store.write() as s:  # a reply that quotes the address, as servers do
        from sqlalchemy import update

        from newsletter.db.models import Delivery

        s.execute(
            update(Delivery)
            .where(Delivery.subscriber_id == gone.id)
            .values(last_reply="250 2.0.0 Ok: queued for <Gone@Example.ORG>")  # servers keep the case
        )
    outcome = store.record_bounce_mail(  # a report kept for review names the address, in its case
        digest="review",
        source="maildir:1",
        kind="review",
        note="bounce not attributed",
        events=[FoundEvent("hard", "gone@example.org", None, None, "5.1.1", "550 <GONE@example.org> no")],
        now=datetime.now(UTC),
        policy=BouncePolicy(3, timedelta(days=30)),
    )
    assert outcome is not None
    confirm_copy = tmp_path / "outbox" / "confirm" / f"{gone.id}-1764054072.eml"
    confirm_copy.parent.mkdir(parents=True, exist_ok=True)
    confirm_copy.write_bytes(b"To: Gone Person <gone@example.org>\r\n\r\nconfirm\r\n")
    before = store.issue_counts(issue_id)[0].deliveries
    c = create_app(settings, store=store).test_client()
    assert log_in(c) == 302
    with caplog.at_level(logging.INFO):
        assert (
            c.post(
                f"/admin/subscribers/{gone.id}/erase", data={"csrf_token": token(c, "/admin/")}
            ).status_code
            == 302
        )
    assert store.get_subscriber("gone@example.org") is None
    erased = store.get_subscriber_by_id(gone.id)
    assert erased is not None and erased.name is None and erased.consent_ip is None
    assert erased.email == f"erased-{gone.id}@erased.invalid" and erased.status == "unsubscribed"
    assert store.issue_counts(issue_id)[0].deliveries == before  # the counts stay
    dump = "\n".join(store.engine.raw_connection().iterdump()).lower()  # every row of every table
    assert "gone@example.org" not in dump and "gone person" not in dump and "stays@example.org" in dump
    assert not confirm_copy.exists()
    assert not any(b"gone@example.org" in p.read_bytes() for p in (tmp_path / "outbox").rglob("*.eml"))
    assert any(b"stays@example.org" in p.read_bytes() for p in (tmp_path / "outbox").rglob("*.eml"))
    assert all("gone@example.org" not in r.getMessage() for r in caplog.records)
    assert any(f"erased subscriber {gone.id}" in r.getMessage() for r in caplog.records)
    store.close()


def test_pause_and_resume_from_the_console_mid_send(
    client: FlaskClient, console: Console, smtp_sink: SmtpSink
) -> None:
    import subprocess
    import sys

    n = 1000
    console.store.import_subscribers(
        [NewSubscriber(f"p{i}@example.org", None) for i in range(n)], now=datetime.now(UTC)
    )
    run_cli(console.config, "build")
    issue_id = console.store.list_issues()[0].id
    env = {"NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789abcdef", "PATH": "/usr/bin:/bin"}
    smtp_sink.gate = Gate(after=300)  # held mid-send while the operator pauses
    sender = subprocess.Popen(
        [sys.executable, "-m", "newsletter.cli", "--config", str(console.config), "send"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=console.config.parent,
    )
    assert smtp_sink.gate.reached.wait(timeout=60)
    paused = client.post(f"/admin/issues/{issue_id}/pause", data={"csrf_token": token(client, "/admin/")})
    assert paused.status_code == 302
    smtp_sink.gate.opened.set()  # at 400 a second, the send sees the pause long before its end
    out, err = sender.communicate(timeout=20)
    assert sender.returncode == 0 and "is paused" in out, err
    at_pause = len(smtp_sink.messages)
    page = client.get(f"/admin/issues/{issue_id}").get_data(as_text=True)
    assert f'data-state="sent">{at_pause}<' in page and 'id="resume"' in page and "paused" in page

    # slowed only to pause: the resumed send runs unthrottled, as after a config edit and restart
    svc = console.app.extensions["newsletter"]
    svc.settings = dataclasses.replace(
        svc.settings, delivery=dataclasses.replace(svc.settings.delivery, rate_per_second=0)
    )
    client.post(f"/admin/issues/{issue_id}/resume", data={"csrf_token": token(client, "/admin/")})
    assert wait_for(lambda: console.store.issue_counts(issue_id)[0].status == "sent", timeout=60)
    got = smtp_sink.by_recipient()
    assert len(got) == n and all(len(m) == 1 for m in got.values())
    page = client.get(f"/admin/issues/{issue_id}").get_data(as_text=True)
    assert f'data-state="sent">{n}<' in page and f'data-state="sent">{len(smtp_sink.messages)}<' in page

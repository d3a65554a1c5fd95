"""The web app through Flask's test client, with the confirmation mail going over real SMTP to the
aiosmtpd fixture and a real SQLite file."""

import email
import io
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from newsletter.config import load_settings
from newsletter.db.models import Subscriber
from newsletter.delivery.tokens import Tokens
from newsletter.store import Store
from newsletter.web import create_app

from ..support.deliveries import make_issue
from ..support.helpers import SECRET, SmtpSink, free_port, write_config
from ..support.web import confirm_link, mailer_of, smtp_app, store_of

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> list[datetime]:
    """The app's time: NOW, until a test moves it."""
    return [NOW]


@pytest.fixture
def app(tmp_path: Path, smtp_sink: SmtpSink, env: None, clock: list[datetime]) -> Iterator[Flask]:
    application, store = smtp_app(
        tmp_path, smtp_sink, "[web]\nsignups_per_ip_per_hour = 20\n", lambda: clock[0]
    )
    yield application
    assert application.extensions["newsletter"].confirmations.wait_idle()  # none left for a closed sink
    store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_signup_page_has_the_form_honeypot_and_embed_snippet(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for needle in ('name="email"', 'name="name"', 'name="website"', "Unsubscribe anytime", "&lt;form method"):
        assert needle in html
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"


def test_double_opt_in_one_mail_and_the_same_answer_for_everyone(
    app: Flask, client: FlaskClient, smtp_sink: SmtpSink
) -> None:
    first = client.post("/subscribe", data={"email": "Reader@Example.com", "name": "Ada"})
    assert mailer_of(app).wait_idle()
    again = client.post("/subscribe", data={"email": "reader@example.com"})
    assert first.status_code == again.status_code == 200
    assert first.get_data() == again.get_data()
    sub = store_of(app).get_subscriber("reader@example.com")
    assert sub is not None and sub.status == "pending" and sub.source == "form" and sub.consent_ip
    assert sub.confirm_sent_at == NOW  # recorded once the server took it
    assert mailer_of(app).wait_idle() and len(smtp_sink.messages) == 1  # not a second mail within the hour
    mail = email.message_from_bytes(smtp_sink.messages[0].data, policy=policy.default)
    assert mail["To"] == "Ada <reader@example.com>" and "Confirm" in str(mail["Subject"])
    link = confirm_link(smtp_sink, "reader@example.com")
    assert client.post(link).status_code == 200
    assert client.post(link).status_code == 200  # idempotent
    assert store_of(app).get_subscriber("reader@example.com").status == "active"  # type: ignore[union-attr]
    active = client.post("/subscribe", data={"email": "reader@example.com"})
    assert active.status_code == 200 and active.get_data() == first.get_data()
    # the one welcome (SPEC 10) on confirming, and nothing for the active reader's new signup
    assert mailer_of(app).wait_idle() and len(smtp_sink.messages) == 2
    assert str(email.message_from_bytes(smtp_sink.messages[1].data)["Subject"]).startswith("Welcome")


def test_bad_input_is_refused_and_nothing_is_stored(
    app: Flask, client: FlaskClient, smtp_sink: SmtpSink
) -> None:
    bad = client.post("/subscribe", data={"email": "not-an-address"})
    assert bad.status_code == 400 and "not a valid email address" in bad.get_data(as_text=True)
    crlf = client.post(
        "/subscribe", data={"email": "x@example.com", "name": "Ada\r\nBcc: victim@example.com"}
    )
    assert crlf.status_code == 400 and "line break" in crlf.get_data(as_text=True)
    trap = client.post("/subscribe", data={"email": "bot@example.com", "website": "http://spam.example"})
    assert trap.status_code == 200
    assert store_of(app).subscriber_counts() == {} and smtp_sink.messages == []


def test_the_21st_signup_from_one_address_is_429(client: FlaskClient) -> None:
    for i in range(20):
        assert client.post("/subscribe", data={"email": f"r{i}@example.com"}).status_code == 200
    limited = client.post("/subscribe", data={"email": "r20@example.com"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    other = client.post(
        "/subscribe", data={"email": "r21@example.com"}, environ_base={"REMOTE_ADDR": "10.9.9.9"}
    )
    assert other.status_code == 200


def test_json_answers(client: FlaskClient) -> None:
    ok = client.post("/subscribe", data={"email": "j@example.com"}, headers={"Accept": "application/json"})
    assert ok.status_code == 200 and ok.get_json()["status"] == "ok"
    bad = client.post("/subscribe", json={"email": "nope"}, headers={"Accept": "application/json"})
    assert bad.status_code == 400 and "not a valid email address" in bad.get_json()["error"]


def test_confirm_links_tampered_expired_or_of_another_kind_are_400(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = Tokens(SECRET)
    sub, _ = store_of(app).add_subscriber("p@example.com", None, now=NOW, status="pending")  # type: ignore[arg-type]
    good = tokens.confirm(sub.id)
    for method in (client.get, client.post):
        assert method(f"/confirm/{good[:-2]}xx").status_code == 400
        assert method(f"/confirm/{tokens.unsubscribe(sub.id)}").status_code == 400
        assert method("/confirm/garbage").status_code == 400
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 8 * 24 * 3600)  # the link is a week old and a day
    expired = client.post(f"/confirm/{good}")
    assert expired.status_code == 400 and "expired" in expired.get_data(as_text=True)
    assert client.get(f"/confirm/{good}").status_code == 400
    assert store_of(app).get_subscriber("p@example.com").status == "pending"  # type: ignore[union-attr]


def test_one_click_unsubscribe(app: Flask, client: FlaskClient) -> None:
    tokens = Tokens(SECRET)
    sub, _ = store_of(app).add_subscriber("u@example.com", None, now=NOW)
    other, _ = store_of(app).add_subscriber("v@example.com", None, now=NOW)
    token = tokens.unsubscribe(sub.id)
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and "<button" in page.get_data(as_text=True)
    assert store_of(app).get_subscriber("u@example.com").status == "active"  # type: ignore[union-attr]  # GET changes nothing
    # exactly as a mailbox provider sends it (RFC 8058): no cookies, a form body
    one_click = client.post(
        f"/unsubscribe/{token}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert one_click.status_code == 200 and "Subscribe again" in one_click.get_data(as_text=True)
    assert client.post(f"/unsubscribe/{token}").status_code == 200  # idempotent
    assert store_of(app).get_subscriber("u@example.com").status == "unsubscribed"  # type: ignore[union-attr]
    forged = token.split(".")[0][:-1] + "Z." + token.split(".")[1]
    assert client.post(f"/unsubscribe/{forged}").status_code == 400
    assert store_of(app).get_subscriber("v@example.com").status == "active"  # type: ignore[union-attr]
    assert other.id != sub.id


def test_archive_and_health(app: Flask, client: FlaskClient) -> None:
    store = store_of(app)
    # stored before each issue had its own placeholder key: the fixed names
    greeting = "<p>__NL_GREETING__</p><a href='__NL_UNSUBSCRIBE_URL__'>u</a>"
    big_news = make_issue(store, content=("25 Nov 2026: Big news", "", greeting, "t"))
    unsent = make_issue(store, date(2026, 11, 26), content=("Tomorrow's scoop", "", "<p>x</p>", "t"))
    paused = make_issue(store, date(2026, 11, 24), content=("Pulled story", "", "<p>x</p>", "t"))
    assert "Big news" not in client.get("/archive").get_data(as_text=True)  # built, not sent
    assert client.get(f"/archive/{big_news}").status_code == 404
    store.start_send(big_news)
    store.start_send(paused)
    store.set_paused(paused, True)
    listing = client.get("/archive").get_data(as_text=True)
    assert f"/archive/{big_news}" in listing and "Big news" in listing
    assert "Tomorrow's scoop" not in listing and "Pulled story" not in listing
    assert client.get(f"/archive/{unsent}").status_code == 404
    assert client.get(f"/archive/{paused}").status_code == 404
    web = client.get(f"/archive/{big_news}").get_data(as_text=True)
    assert "__NL_" not in web and "/unsubscribe/" not in web
    assert client.get("/archive/999").status_code == 404
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    store.engine.dispose()
    Path(store.url.split("///", 1)[1]).unlink()  # the database is gone
    (Path(store.url.split("///", 1)[1]).parent / "subscribers.db").mkdir()  # and can't be recreated
    assert client.get("/healthz").status_code == 503


def test_a_bounced_or_complained_address_comes_back_only_by_its_owners_confirmation_once_a_month(
    app: Flask, client: FlaskClient, smtp_sink: SmtpSink, clock: list[datetime]
) -> None:
    """A report that closed an address may be forged (every delivered copy shows its VERP
    address), so its owner can undo it: a signup for a closed address gets the same answer as any
    other and one confirmation mail (though the last went out within 30 days, before the closing),
    then none within 30 days, whatever process asks (the time is in the database); the address
    stays closed, with its own name, until that confirmation is confirmed. A confirmation link
    sent before the closing reopens nothing."""
    from newsletter.web.signup import CLOSED_RESEND_AFTER

    store = store_of(app)
    closed = {"angry@example.com": "complained", "gone@example.com": "bounced"}
    for address, status in closed.items():
        sub, _ = store.add_subscriber(address, "Original", now=NOW - timedelta(days=60))
        with store.write() as s:  # confirmed 3 days ago, closed by a report yesterday
            row = s.get(Subscriber, sub.id)
            assert row is not None
            row.status, row.confirm_sent_at = status, NOW - timedelta(days=3)
            setattr(row, f"{status}_at", NOW - timedelta(days=1))
    old_link = f"/confirm/{Tokens(SECRET).confirm(store.get_subscriber('angry@example.com').id)}"  # type: ignore[union-attr]
    assert client.post(old_link).status_code == 400  # sent before the closing
    fresh = client.post("/subscribe", data={"email": "fresh@example.com", "name": "New"})
    assert mailer_of(app).wait_idle()

    def sign_up() -> list[str]:
        smtp_sink.messages.clear()
        answers = [client.post("/subscribe", data={"email": a, "name": "Forger"}) for a in closed]
        assert all(a.status_code == 200 and a.get_data() == fresh.get_data() for a in answers)
        assert mailer_of(app).wait_idle()
        return sorted(smtp_sink.by_recipient())

    assert sign_up() == sorted(closed)
    assert {a: (s.status, s.name) for a in closed if (s := store.get_subscriber(a))} == {
        a: (status, "Original") for a, status in closed.items()
    }
    assert sign_up() == []
    other = create_app(
        app.extensions["newsletter"].settings, store=store, now=lambda: clock[0]
    )  # another process
    assert other.test_client().post("/subscribe", data={"email": "angry@example.com"}).status_code == 200
    assert other.extensions["newsletter"].confirmations.wait_idle() and smtp_sink.messages == []
    clock[0] = NOW + CLOSED_RESEND_AFTER - timedelta(minutes=1)
    assert sign_up() == []
    clock[0] = NOW + CLOSED_RESEND_AFTER
    assert sign_up() == sorted(closed)
    for address in closed:
        assert client.post(confirm_link(smtp_sink, address)).status_code == 200
        sub = store.get_subscriber(address)
        assert sub is not None and (sub.status, sub.confirmed_at) == ("active", clock[0])


def test_a_link_scanner_fetching_the_confirm_link_confirms_nothing(
    app: Flask, client: FlaskClient, smtp_sink: SmtpSink
) -> None:
    client.post("/subscribe", data={"email": "scanned@example.com"})
    assert mailer_of(app).wait_idle()
    link = confirm_link(smtp_sink, "scanned@example.com")
    for _ in range(3):  # a scanner, a preview pane, a prefetch
        page = client.get(link)
        assert page.status_code == 200
        assert f'<form method="post" action="{link}">' in page.get_data(as_text=True)
        assert ">Confirm</button>" in page.get_data(as_text=True)
    assert store_of(app).get_subscriber("scanned@example.com").status == "pending"  # type: ignore[union-attr]
    assert client.post(link).status_code == 200
    assert store_of(app).get_subscriber("scanned@example.com").status == "active"  # type: ignore[union-attr]


def test_a_signup_while_the_relay_is_down_records_nothing_and_says_try_again(
    app: Flask, client: FlaskClient, smtp_sink: SmtpSink, clock: list[datetime]
) -> None:
    store = store_of(app)
    mailer = mailer_of(app)
    smtp_sink.rcpt_hook = lambda _address: "421 4.3.2 Service not available, closing channel"
    first = client.post("/subscribe", data={"email": "early@example.com"})
    assert first.status_code == 200 and mailer.wait_idle()
    assert store.get_subscriber("early@example.com").confirm_sent_at is None  # type: ignore[union-attr]
    for address in ("early@example.com", "other@example.com", "never@example.com"):
        down = client.post("/subscribe", data={"email": address})
        assert down.status_code == 503 and "try again" in down.get_data(as_text=True)
        assert int(down.headers["Retry-After"]) > 0
    assert store.get_subscriber("other@example.com") is None  # nothing stored while mail can't go
    smtp_sink.rcpt_hook = None  # the relay is back; a minute later the reader tries again
    clock[0] = NOW + timedelta(seconds=61)
    again = client.post("/subscribe", data={"email": "early@example.com"})
    assert again.status_code == 200 and mailer.wait_idle()
    assert len(smtp_sink.by_recipient()["early@example.com"]) == 1
    assert store.get_subscriber("early@example.com").confirm_sent_at == clock[0]  # type: ignore[union-attr]


def test_a_refused_recipient_is_that_signups_own_failure_and_the_form_stays_open(
    app: Flask, client: FlaskClient, smtp_sink: SmtpSink
) -> None:
    """Addresses the relay refuses at RCPT (a 5xx, or a 4xx like greylisting, even one that echoes
    an address saying "rate"), one from each of three visitors, close the form for nobody: the next
    reader's mail goes out."""
    refusals = {
        "nobody@example.com": "550 5.1.1 No such user",
        "blocked@example.com": "554 5.7.1 Recipient address rejected",
        "rate@example.com": "450 4.2.0 <rate@example.com>: Recipient address rejected: Greylisted",
    }
    smtp_sink.rcpt_hook = refusals.get
    mailer = mailer_of(app)
    for i, address in enumerate(refusals):
        visitor = {"REMOTE_ADDR": f"203.0.113.{i + 1}"}
        answer = client.post("/subscribe", data={"email": address}, environ_base=visitor)
        assert answer.status_code == 200 and mailer.wait_idle()
        assert mailer.relay_down() is None
        sub = store_of(app).get_subscriber(address)  # pending, mailed again if they sign up again
        assert sub is not None and sub.status == "pending" and sub.confirm_sent_at is None
    good = client.post(
        "/subscribe", data={"email": "good@example.com"}, environ_base={"REMOTE_ADDR": "198.51.100.9"}
    )
    assert good.status_code == 200 and mailer.wait_idle()
    assert confirm_link(smtp_sink, "good@example.com").startswith("/confirm/")
    assert list(smtp_sink.by_recipient()) == ["good@example.com"]


SLOW = "slow"  # the relay answers later than timeout_seconds (1 s here): a lookup of a slow domain


def slowly(reply: str) -> str | None:
    """The relay's reply, after a wait past the timeout when it is SLOW."""
    if reply != SLOW:
        return reply
    time.sleep(1.6)
    return None


@pytest.mark.parametrize(
    ("stranger", "reply"),
    [
        ("x@slow.attacker.example", SLOW),
        ("spam@example.com", "554 5.7.1 Message rejected: spam content"),
        ("odd@example.com", "554 5.6.0 Message content rejected"),
    ],
)
def test_a_strangers_address_or_content_failing_its_one_mail_keeps_the_form_open(
    tmp_path: Path, smtp_sink: SmtpSink, env: None, stranger: str, reply: str
) -> None:
    """What a stranger chose failing their own mail: an address the relay cannot check within
    timeout_seconds (a slow RCPT), or the content (the name goes into To:) refused for good at
    DATA as policy or content (5.7.x, 5.6.x). That signup stays pending; the form stays open and
    the next reader's mail goes out."""
    smtp_sink.rcpt_hook = lambda to: slowly(reply) if to == stranger and reply == SLOW else None
    smtp_sink.data_hook = lambda to: reply if to == [stranger] and reply != SLOW else None
    app, store = smtp_app(tmp_path, smtp_sink, "timeout_seconds = 1\n", lambda: NOW)
    client, mailer = app.test_client(), mailer_of(app)
    assert client.post("/subscribe", data={"email": stranger, "name": "Cheap VIAGRA"}).status_code == 200
    assert mailer.wait_idle() and mailer.relay_down() is None
    sub = store.get_subscriber(stranger)
    assert sub is not None and sub.status == "pending" and sub.confirm_sent_at is None
    good = client.post("/subscribe", data={"email": "alice@example.org"})
    assert good.status_code == 200 and mailer.wait_idle()
    assert list(smtp_sink.by_recipient()) == ["alice@example.org"]
    store.close()


RELAY_DOWN = {  # where the relay fails, and how: no address could get through
    "refuses MAIL FROM": ("MAIL", "550 5.7.1 Sender rejected"),
    "answers MAIL too late": ("MAIL", SLOW),
    "refuses the message for its own state": ("DATA", "554 5.3.0 Mail system full"),
    "defers the message": ("DATA", "451 4.3.0 Queue file write error"),
    "closes the session at the message": ("DATA", "421 4.3.2 Service shutting down"),
    "is not listening": ("", ""),
}


@pytest.mark.parametrize("relay", list(RELAY_DOWN))
def test_a_relay_that_no_address_could_pass_still_closes_the_form(
    tmp_path: Path, smtp_sink: SmtpSink, env: None, relay: str
) -> None:
    """As a 421 to RCPT does (the relay closes the session): see the relay-down test above. A
    failure at DATA closes it unless it is a 5.6.x or 5.7.x: a 4xx, 421, 5.3.x, 5.4.x, 5.5.x."""
    stage, reply = RELAY_DOWN[relay]
    smtp_sink.mail_hook = lambda _sender: slowly(reply) if stage == "MAIL" else None
    smtp_sink.data_hook = lambda _to: reply if stage == "DATA" else None
    app, store = smtp_app(
        tmp_path, free_port() if not stage else smtp_sink, "timeout_seconds = 1\n", lambda: NOW
    )
    client = app.test_client()
    assert client.post("/subscribe", data={"email": "first@example.com"}).status_code == 200
    assert mailer_of(app).wait_idle()
    down = client.post("/subscribe", data={"email": "second@example.com"})
    assert down.status_code == 503 and int(down.headers["Retry-After"]) > 0
    assert store.get_subscriber("second@example.com") is None and smtp_sink.messages == []
    store.close()


def test_odd_requests_are_400_404_or_413_never_500(app: Flask, client: FlaskClient) -> None:
    json_answers = {"Accept": "application/json"}
    for body in ({"email": "a@example.com", "name": 42}, ["a@example.com"], "text", 7, {"email": ["x"]}):
        odd = client.post("/subscribe", json=body, headers=json_answers)
        assert odd.status_code == 400, (body, odd.status_code)
    assert client.post("/subscribe", data=b"{not json", content_type="application/json").status_code == 400
    for path in (
        "/unsubscribe/\u00e9.x",
        "/unsubscribe/%00.%ff",
        "/confirm/\u00e9",
        "/unsubscribe/" + "a." * 3000,
    ):
        assert client.get(path).status_code == 400, path
        assert client.post(path).status_code == 400, path
    for path in ("/archive/99999999999999999999999", "/archive/-1", "/archive/2147483648", "/nowhere"):
        assert client.get(path).status_code == 404, path
    huge = b"email=a%40example.com&name=" + b"x" * (64 * 1024)
    too_big = client.post("/subscribe", data=huge, content_type="application/x-www-form-urlencoded")
    assert too_big.status_code == 413
    assert client.post("/unsubscribe/x.y", data=b"x" * (50 * 1024 * 1024)).status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap holds as the body is read
        yield b"email=a%40example.com&name="
        for _ in range(100):
            yield b"x" * 1024

    streamed = client.post(
        "/subscribe",
        input_stream=io.BytesIO(b"".join(chunked())),
        content_type="application/x-www-form-urlencoded",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as waitress says of a de-chunked body
    )
    assert streamed.status_code == 413
    assert store_of(app).subscriber_counts() == {}


def test_behind_a_trusted_proxy_the_limit_sees_the_visitor(tmp_path: Path, env: None) -> None:
    """[web] trusted_proxies: X-Forwarded-For is believed only from those addresses; a visitor who
    sends it directly cannot change the address the per-address limit counts."""
    config = write_config(
        tmp_path, extra='[web]\nsignups_per_ip_per_hour = 2\ntrusted_proxies = ["10.0.0.0/8"]\n'
    )
    settings = load_settings(config)
    assert settings.web.trusted_proxies == ("10.0.0.0/8",)
    store = Store(settings.database_url)
    store.migrate()
    client = create_app(settings, store=store, now=lambda: NOW).test_client()

    def signup(n: int, peer: str, forwarded: str) -> int:
        return client.post(
            "/subscribe",
            data={"email": f"p{n}@example.com"},
            environ_base={"REMOTE_ADDR": peer},
            headers={"X-Forwarded-For": forwarded},
        ).status_code

    via_proxy = [signup(i, "10.1.2.3", "203.0.113.9") for i in range(3)]
    assert via_proxy == [200, 200, 429]  # the visitor's own address is counted, not the proxy's
    assert signup(3, "10.1.2.3", "203.0.113.10") == 200  # another visitor through the same proxy
    # straight to the server, a forged header changes nothing: the peer itself is counted
    direct = [signup(10 + i, "198.51.100.5", f"192.0.2.{i}") for i in range(3)]
    assert direct == [200, 200, 429]
    pending = store.get_subscriber("p0@example.com")
    assert pending is not None and pending.consent_ip == "203.0.113.9"
    store.close()


def test_no_proxy_is_trusted_by_default(client: FlaskClient, app: Flask) -> None:
    assert app.extensions["newsletter"].settings.web.trusted_proxies == ()
    for i in range(21):
        code = client.post(
            "/subscribe", data={"email": f"d{i}@example.com"}, headers={"X-Forwarded-For": f"192.0.2.{i}"}
        ).status_code
    assert code == 429


def test_a_confirmation_bounces_to_the_bounce_mailbox_like_every_other_mail(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    """With [bounces] the envelope sender of every mail is the return path with a VERP token, a
    confirmation's as an issue's: sent to a dead address, it bounces to the mailbox the operator
    reads, names the pending subscriber, and closes the address, so no stranger can have the form
    mail it again within 30 days."""
    from newsletter.bounces.classify import classify
    from newsletter.bounces.policy import BouncePolicy
    from newsletter.delivery.sending import NO_ISSUE
    from newsletter.delivery.tokens import verp_token

    from ..support import bounce_mails

    app, store = smtp_app(
        tmp_path, smtp_sink, '[bounces]\nreturn_path = "bounces@example.com"\n', lambda: NOW
    )
    client = app.test_client()
    assert client.post("/subscribe", data={"email": "new@example.org"}).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    (received,) = smtp_sink.messages
    assert received.rcpt_tos == ["new@example.org"]
    token = verp_token(received.mail_from, "bounces@example.com")
    pending = store.get_subscriber("new@example.org")
    assert token is not None and pending is not None and pending.status == "pending"
    assert Tokens(SECRET).read_bounce(token) == (NO_ISSUE, pending.id)

    dsn = bounce_mails.postfix_dsn(
        verp=received.mail_from, final_recipient="new@example.org", original="Subject: Confirm\r\n"
    )
    found = classify(dsn, tokens=Tokens(SECRET), return_path="bounces@example.com")
    outcome = store.record_bounce_mail(
        digest="confirmation-bounce",
        source="test",
        kind=found.kind,
        note=found.note,
        events=found.events,
        now=NOW,
        policy=BouncePolicy(3, timedelta(days=30)),
    )
    assert outcome is not None and outcome.lines == ["hard 5.1.1 new@example.org: now bounced"]
    assert store.get_subscriber("new@example.org").status == "bounced"  # type: ignore[union-attr]
    assert client.post("/subscribe", data={"email": "new@example.org"}).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    assert len(smtp_sink.messages) == 1  # the form mails a bounced address no more this month
    store.close()

"""What a stranger sends cannot hurt the list: every page and route of `newsletter serve` tried with
hostile values in every field a stranger controls (a signup, a feed, a bounce, a CSV, a request
line), through Flask's test client on a real SQLite file, with mail over real SMTP."""

from __future__ import annotations

import email
import io
import re
from datetime import UTC, datetime, timedelta
from email import policy
from html.parser import HTMLParser
from pathlib import Path

from newsletter.bounces.classify import classify
from newsletter.bounces.policy import BouncePolicy
from newsletter.config import Settings
from newsletter.db.models import Delivery, DeliveryStatus
from newsletter.delivery.tokens import Tokens
from newsletter.store import Store

from .support import bounce_mails as m
from .support.helpers import (
    PASSWORD,
    SECRET,
    Console,
    FeedServer,
    Route,
    SmtpSink,
    log_in,
    recent,
    rss,
    run_cli,
    token,
    upload_csv,
    write_config,
)

# Markup a stranger might send: a custom element with an event handler, a script, a broken attribute.
PAYLOAD = '"><x-evil onerror=alert(1)>pwned</x-evil><script>alert(1)</script><img src=x onerror=alert(2)>'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_inert(page: str, *, shown: bool = True) -> None:
    """No markup of PAYLOAD became a tag or an attribute; with `shown`, it is on the page as text."""
    parsed = _Tags()
    parsed.feed(page)
    parsed.close()
    for tag, attrs in parsed.tags:
        assert tag != "x-evil", page
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "script":  # only the console's own scripts: a file, or the charts' JSON
            assert attrs.get("src") or attrs.get("type") == "application/json", attrs
        if tag == "img":
            assert attrs.get("src") != "x", attrs
    if shown:
        assert "<x-evil onerror=alert(1)>" in "".join(parsed.text), "the payload should show as text"


def _issue_with_hostile_fields(store: Store, now: datetime) -> int:
    """An issue whose subject and text carry a feed's markup, begun sending, with a server's reply
    (as a bounce or a hostile relay gives it) on a failed delivery of a hostile signup's name."""
    sub, _ = store.add_subscriber("victim@example.org", PAYLOAD[:90], now=now)
    issue = store.create_issue(
        now.date(),
        story_ids=[],
        content=lambda _id: (f"Today: {PAYLOAD}", PAYLOAD, "<p>fine</p>", f"Top story: {PAYLOAD}\n"),
        placeholder_key=None,
        now=now,
    )
    assert issue is not None
    store.start_send(issue.id)
    with store.write() as s:
        row = s.get(Delivery, (issue.id, sub.id))
        assert row is not None
        row.status, row.last_reply = DeliveryStatus.FAILED, f"550 5.1.1 {PAYLOAD}"
    return issue.id


def _forged_bounce(store: Store, now: datetime) -> None:
    """A mail to the bounce address with no VERP and no signed link, naming the victim."""
    mail = m.gmail_dsn(
        verp="bounces@example.com",
        recipient="victim@example.org",
        status="5.1.1",
        diagnostic=f"550 {PAYLOAD}",
        original=m.original_headers(to="victim@example.org", unsubscribe_url=PAYLOAD, issue_id=1),
    )
    verdict = classify(mail, tokens=Tokens(SECRET), return_path="bounces@example.com")
    assert verdict.kind == "review"
    outcome = store.record_bounce_mail(
        digest="forged",
        source=f"maildir:{PAYLOAD}",
        kind=verdict.kind,
        note=verdict.note,
        events=verdict.events,
        now=now,
        policy=BouncePolicy(3, timedelta(days=30)),
    )
    assert outcome is not None


def test_every_page_shows_a_strangers_markup_as_text(console: Console) -> None:
    now = datetime.now(UTC)
    issue_id = _issue_with_hostile_fields(console.store, now)
    _forged_bounce(console.store, now)
    assert console.store.get_subscriber("victim@example.org").status == "active"  # type: ignore[union-attr]
    public = console.app.test_client()
    signup = public.post("/subscribe", data={"email": PAYLOAD, "name": "x"})
    assert signup.status_code == 400
    assert_inert(signup.get_data(as_text=True))
    named = public.post("/subscribe", data={"email": "named@example.org", "name": PAYLOAD[:95]})
    assert named.status_code == 200
    assert_inert(public.get("/archive").get_data(as_text=True))
    wrong = public.post(
        "/admin/login", data={"username": PAYLOAD, "password": "no", "csrf_token": token(public)}
    )
    assert_inert(wrong.get_data(as_text=True), shown=False)  # the name is echoed in a value attribute
    assert 'value="&#34;&gt;&lt;x-evil' in wrong.get_data(as_text=True)

    operator = console.app.test_client()
    assert log_in(operator) == 302
    assert_inert(operator.get("/admin/").get_data(as_text=True), shown=False)
    assert_inert(operator.get(f"/admin/issues/{issue_id}").get_data(as_text=True))
    review = operator.get("/admin/bounces").get_data(as_text=True)
    assert_inert(review)
    assert "victim@example.org" in review and "not attributed" in review
    listing = operator.get("/admin/subscribers").get_data(as_text=True)
    assert_inert(listing)
    searched = operator.get("/admin/subscribers", query_string={"q": PAYLOAD}).get_data(as_text=True)
    assert_inert(searched, shown=False)
    assert 'value="&#34;&gt;&lt;x-evil' in searched
    upload = f"email,name\n{PAYLOAD.replace(',', ' ')},Bad\nok@example.org,\n".encode()
    imported = operator.post(
        "/admin/subscribers/import",
        data={
            "file": (io.BytesIO(upload), f"{PAYLOAD.lstrip(chr(34))}.csv"),
            "csrf_token": token(operator, "/admin/subscribers"),
        },
        content_type="multipart/form-data",
    )
    assert imported.status_code == 200
    assert_inert(imported.get_data(as_text=True))


def test_logout_and_a_password_change_end_every_session_of_that_operator(console: Console) -> None:
    """A copied cookie stops working at logout, and every session stops at a password change."""
    from newsletter.operators import hash_password

    desk, laptop = console.app.test_client(), console.app.test_client()
    assert log_in(desk) == 302 and log_in(laptop) == 302
    stolen = desk.get_cookie("newsletter_session")
    assert stolen is not None
    thief = console.app.test_client()
    thief.set_cookie("newsletter_session", stolen.value, domain=stolen.domain or "localhost")
    assert thief.get("/admin/").status_code == 200  # the copy works while the session lives
    assert desk.post("/admin/logout", data={"csrf_token": token(desk, "/admin/")}).status_code == 302
    assert thief.get("/admin/").status_code == 302  # logged out means out, copies included
    assert laptop.get("/admin/").status_code == 302  # every session of that operator ends
    assert log_in(laptop) == 302 and laptop.get("/admin/").status_code == 200
    console.store.save_operator("ed", hash_password("a new long password"), now=datetime.now(UTC))
    assert laptop.get("/admin/").status_code == 302  # a new password ends the old sessions
    assert log_in(laptop, password="a new long password") == 302


def test_the_login_limit_is_counted_before_the_check_by_address_and_by_name(console: Console) -> None:
    """40 wrong passwords at once get at most 10 password checks; 10 failures for one name lock that
    name from every address."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(40)

    def attempt(i: int) -> int:
        c = console.app.test_client()
        csrf = token(c)
        barrier.wait(timeout=30)
        data = {"username": "ed", "password": f"guess {i}", "csrf_token": csrf}
        return c.post("/admin/login", data=data).status_code

    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(attempt, range(40)))
    assert codes.count(200) <= 10 and codes.count(200) + codes.count(429) == 40, codes

    elsewhere = console.app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "198.51.100.77"  # another address, the same name
    assert log_in(elsewhere) == 429
    other_name = console.app.test_client()
    other_name.environ_base["REMOTE_ADDR"] = "198.51.100.78"
    assert log_in(other_name, name="nobody") == 200  # a wrong name from a fresh address is checked


# The per-reader placeholders as a feed might plant them: the fixed names of issues built before
# each issue had its own, other cases (the text part upper-cases a section's name), a guessed key,
# and spellings the pipeline decodes into them (a character reference, a percent-encoded query).
_FIXED = ("__NL_UNSUBSCRIBE_URL__", "__NL_GREETING__", "__NL_ISSUE_ID__")
_PLANTED = " ".join(
    (*_FIXED, "__nl_unsubscribe_url__", "__Nl_Greeting__", "__NL_UNSUBSCRIBE_URL_0123456789abcdef__")
)
_CHARREF = "&amp;#95;&amp;#95;NL_UNSUBSCRIBE_URL&amp;#95;&amp;#95;"  # &#95; once the XML is read
_PERCENT = "%5F%5FNL_UNSUBSCRIBE_URL%5F%5F"  # "_" once the link is made canonical
_READERS = {
    "quintessa@example.org": "Quintessa Marlowe",
    "bartholomew@example.org": "Bartholomew Okonkwo",
    "xiomara@example.org": "Xiomara Lindqvist",
}


def _planted_feed() -> bytes:
    image_query = "u=__NL_UNSUBSCRIBE_URL__&amp;g=__NL_GREETING__&amp;i=__NL_ISSUE_ID__"
    items: list[dict[str, object]] = [
        {
            "title": f"Grid {_PLANTED} record",
            "link": "https://planted.example/1?next=__NL_UNSUBSCRIBE_URL__&amp;who=__NL_GREETING__",
            "description": f"<p>Hello {_PLANTED}.</p><ul><li>{_PLANTED}</li></ul>"
            f'<img src="https://img.planted.example/inline.jpg?{image_query}" width="600">',
            "image": f"https://img.planted.example/lead.jpg?{image_query}",
            "author": _PLANTED,
            "category": "__nl_unsubscribe_url__",
            "date": recent(1),
        },
        {
            "title": f"Council {_CHARREF} votes",
            "link": f"https://planted.example/2?u={_PERCENT}",
            "description": f"<p>Words {_CHARREF} and {_PLANTED}.</p>",
            "image": "https://img.planted.example/2/__NL_UNSUBSCRIBE_URL_0123456789abcdef__.jpg",
            "author": "__nl_greeting__",
            "category": f"Local {_PLANTED}",
            "date": recent(2),
        },
        {
            "title": "A plain story",
            "link": "https://planted.example/3",
            "description": "<p>Nothing planted here.</p>",
            "image": "https://img.planted.example/__NL_GREETING__/__NL_UNSUBSCRIBE_URL__.jpg",
            "category": "__NL_GREETING__",
            "date": recent(3),
        },
    ]
    return rss(items)


def _without_own_link(body: str, url: str, *, html: bool) -> str:
    """A message part without the product's own unsubscribe link (and nothing else removed)."""
    if html:
        own = re.compile(f'<a href="{re.escape(url)}"[^>]*>Unsubscribe</a>')
    else:
        own = re.compile(f"^Unsubscribe with one click: {re.escape(url)}$", re.M)
    found = own.findall(body)
    assert len(found) == 1, (url, body)
    return own.sub("", body)


def _found(needles: list[str], places: dict[str, str]) -> list[tuple[str, str]]:
    """(place, needle) for each needle a place contains."""
    return [(where, needle) for needle in needles for where, seen in places.items() if needle in seen]


def _parts(data: bytes) -> tuple[email.message.EmailMessage, str, str]:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return msg, text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def test_no_text_from_a_feed_becomes_a_readers_unsubscribe_link_or_name(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    """A feed that plants the per-reader placeholders in a story's title, link, summary, bullets,
    image, author and section: each reader's unsubscribe token is only in the product's own link
    and List-Unsubscribe header of their own message, and their name only in To and the greeting;
    the archive, the previews and a test copy carry no reader's token."""
    from newsletter.config import load_settings
    from newsletter.delivery.sending import send, send_test_copy
    from newsletter.issues.build import gather_and_build
    from newsletter.operators import hash_password
    from newsletter.web import create_app

    feed_server.routes["/planted"] = Route(_planted_feed())
    config = write_config(
        tmp_path,
        sources=[("Planted", feed_server.url("/planted"))],
        delivery='transport = "smtp"\nrate_per_second = 400\nprocesses = 1',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\nconnections = 1\n',
    )
    settings = load_settings(config)
    store = Store(settings.database_url)
    try:
        store.migrate()
        now = datetime.now(UTC)
        tokens = Tokens(SECRET)
        readers = {}
        for address, name in _READERS.items():
            sub, _ = store.add_subscriber(address, name, now=now)
            readers[address] = (name, tokens.unsubscribe(sub.id))
        own_and_others = [tok for _, tok in readers.values()]
        first_names = [n.split()[0] for n, _ in readers.values()]
        everyones = own_and_others + first_names

        report, (outcome, *_) = gather_and_build(settings, store, issue_date=now.date(), now=now)
        assert report is not None and not report.failed and report.new_stories == 3
        issue = outcome.issue
        assert issue is not None and issue.story_count == 3, outcome.reason
        sent = send(settings, store, issue)
        assert sent.counts.get("sent") == len(readers), sent
        base = "https://news.example.com"
        mails = smtp_sink.by_recipient()
        assert sorted(mails) == sorted(readers)
        for address, (name, own_token) in readers.items():
            (received,) = mails[address]
            msg, text, html = _parts(received.data)
            url = f"{base}/unsubscribe/{own_token}"
            assert msg["List-Unsubscribe"] == f"<{url}>"
            first = name.split()[0]
            assert address in str(msg["To"]) and name in str(msg["To"])
            headers = "".join(f"{k}: {v}\n" for k, v in msg.items() if k not in ("List-Unsubscribe", "To"))
            rest_text = _without_own_link(text, url, html=False)
            rest_html = _without_own_link(html, url, html=True)
            places = {"headers": headers, "text": rest_text, "html": rest_html}
            assert _found(own_and_others, places) == [], address
            greeting = f"Good morning, {first}."
            assert rest_text.count(greeting) == 1 and rest_html.count(greeting) == 1, address
            rest_text, rest_html = rest_text.replace(greeting, ""), rest_html.replace(greeting, "")
            places |= {"text": rest_text, "html": rest_html}
            assert _found(first_names, places) == [], address
            for seen in (rest_text, rest_html):
                assert "/unsubscribe/" not in seen and "__nl_" not in seen.lower()
            assert "Grid" in text and "Council" in html  # the planted stories are there, as words

        # the web archive, the console's previews and a test copy: nobody's token, nobody's name
        app = create_app(settings, store=store)
        public, operator = app.test_client(), app.test_client()
        store.save_operator("ed", hash_password(PASSWORD), now=now)
        assert log_in(operator) == 302
        pages = {
            "archive": public.get(f"/archive/{issue.id}"),
            "console preview": operator.get(f"/admin/issues/{issue.id}/html"),
            "console issue page": operator.get(f"/admin/issues/{issue.id}"),
        }
        assert {where: page.status_code for where, page in pages.items()} == dict.fromkeys(pages, 200)
        places = {where: page.get_data(as_text=True) for where, page in pages.items()}
        preview = tmp_path / "preview.html"
        run_cli(config, "preview", "--out", str(preview))
        places["preview file"] = preview.read_text(encoding="utf-8")
        before = len(smtp_sink.messages)
        send_test_copy(settings, store, issue, "editor@example.net")
        _, places["test copy text"], places["test copy html"] = _parts(smtp_sink.messages[before].data)
        assert _found(everyones, places) == []
        assert _found(["__nl_"], {where: seen.lower() for where, seen in places.items()}) == []
        assert "Grid" in places["preview file"] and "/unsubscribe/" not in places["preview file"]
        assert app.extensions["newsletter"].confirmations.wait_idle()
    finally:
        store.close()


def test_an_issue_stored_before_placeholder_keys_still_sends_and_shows(
    tmp_path: Path, settings: Settings
) -> None:
    """An issue built at revision 0008 keeps the fixed names after the upgrade: each reader's copy
    gets their link and greeting, the archive the site's."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from newsletter.content.render import GREETING, UNSUBSCRIBE_URL, render_web
    from newsletter.db import engine
    from newsletter.delivery.compose import Recipient
    from newsletter.delivery.sending import issue_template

    store = Store(f"sqlite:///{tmp_path / 'before.db'}")
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(engine.__file__).parent / "migrations"))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0008")
            conn.execute(
                text(
                    "INSERT INTO issues (issue_date, subject, preheader, html, text, story_count, status,"
                    " created_at, paused) VALUES ('2026-11-25', 'Old', '', :html, :text, 0, 'sent',"
                    " '2026-11-25 07:00:00', 0)"
                ),
                {
                    "html": f'<p>{GREETING}</p><a href="{UNSUBSCRIBE_URL}">Unsubscribe</a>',
                    "text": f"{GREETING}\nUnsubscribe: {UNSUBSCRIBE_URL}\n",
                },
            )
        store.migrate()
        (issue,) = store.list_issues()
        assert issue.placeholder_key is None
        message = issue_template(settings, issue).compose(Recipient(7, "ada@example.org", "Ada Byron", "TOK"))
        _, plain, html = _parts(message)
        assert plain == "Good morning, Ada.\nUnsubscribe: https://news.example.com/unsubscribe/TOK\n"
        assert '<a href="https://news.example.com/unsubscribe/TOK">Unsubscribe</a>' in html
        web = render_web(issue.html, issue.placeholder_key, settings)
        assert web == '<p>Good morning.</p><a href="https://news.example.com/">Unsubscribe</a>'
    finally:
        store.close()


def test_a_name_with_a_bidi_control_is_refused_by_the_form_json_csv_and_cli(console: Console) -> None:
    """U+202E and its kin reorder what follows wherever the name is shown: 400 with the reason from
    the form and JSON, a bad line in a CSV import, an error from `subscribers add`; nothing stored."""
    spoof = "Ann \u202egnp.exe"
    public = console.app.test_client()
    form = public.post("/subscribe", data={"email": "form@example.org", "name": spoof})
    assert form.status_code == 400 and "text-direction control" in form.get_data(as_text=True)
    answer = public.post(
        "/subscribe",
        json={"email": "json@example.org", "name": "\u2067x\u2069"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 400 and "text-direction control" in answer.get_json()["error"]
    operator = console.app.test_client()
    assert log_in(operator) == 302
    upload = f"email,name\ncsv@example.org,{spoof}\nplain@example.org,Ann\n".encode()
    imported = upload_csv(operator, upload)
    assert "1 added" in imported and "<td>2</td><td>the name contains a text-direction control" in imported
    cli = run_cli(console.config, "subscribers", "add", "cli@example.org", "--name", spoof, check=False)
    assert cli.returncode != 0 and "text-direction control" in cli.stderr
    assert [s.email for s in console.store.iter_subscribers()] == ["plain@example.org"]

"""SPEC 8 on the web, the command line and the console: the preference page (GET and POST, form or
JSON, hostile input), the choices on the signup form carried to the confirmation, the link in every
mail and on the confirmation page, `subscribers add/import/export/list`, and the console's filters
and counts. Real SQLite files, mail over real SMTP to the aiosmtpd fixture."""

from __future__ import annotations

import csv
import email
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from flask import Flask

from newsletter.config import load_settings
from newsletter.db.models import Frequency, Subscriber, SubscriberStatus
from newsletter.delivery.sending import send
from newsletter.delivery.tokens import Tokens
from newsletter.issues.build import gather_and_build, today
from newsletter.store import Store
from newsletter.subscribers.records import Preferences
from newsletter.web import PUBLIC_BODY_LIMIT, create_app

from ..support.helpers import ROOT, SECRET, SmtpSink, free_port, log_in, run_cli, write_config
from ..support.web import chromium, needs_chromium, screenshots, serving, store_of

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
SAMPLES = [
    ("Tech", ROOT / "samples/feeds/tech-news.xml", "Tech News"),
    ("Deep", ROOT / "samples/feeds/in-depth.atom", "In-Depth"),
    ("Reviews", ROOT / "samples/feeds/reviews.rdf", "Expert Reviews"),
]
SECTIONS = ("Tech News", "In-Depth", "Expert Reviews")
JSON = {"Accept": "application/json"}


def choices_config(
    tmp_path: Path, sink: SmtpSink, *, weekly_day: str = "friday", sources: list = SAMPLES
) -> Path:  # type: ignore[type-arg]
    return write_config(
        tmp_path,
        sources=[(name, str(url), section) for name, url, section in sources],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
        f'[digest]\nweekly_day = "{weekly_day}"\n',
    )


@pytest.fixture
def app(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> Iterator[Flask]:
    settings = load_settings(choices_config(tmp_path, smtp_sink))
    store = Store(settings.database_url)
    store.migrate()
    application = create_app(settings, store=store, now=lambda: NOW)
    yield application
    assert application.extensions["newsletter"].confirmations.wait_idle()
    store.close()


def reader(app: Flask, address: str = "ada@example.com", **kw: object) -> tuple[Subscriber, str]:
    """A stored reader and the path of their preference page."""
    sub, _ = store_of(app).add_subscriber(address, "Ada", now=NOW, **kw)  # type: ignore[arg-type]
    return sub, f"/preferences/{Tokens(SECRET).preferences(sub.id)}"


def snapshot(app: Flask, sub: Subscriber) -> tuple[object, ...]:
    found = store_of(app).get_subscriber_by_id(sub.id)
    assert found is not None
    return (found.status, found.name, found.sections, found.frequency, found.unsubscribed_at)


# -- the preference page --------------------------------------------------------------------------


def test_the_page_shows_the_readers_choices_without_login_or_cookie(app: Flask) -> None:
    client = app.test_client()
    sub, path = reader(app, preferences=Preferences(("Expert Reviews",), Frequency.WEEKLY))
    page = client.get(path)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Set-Cookie" not in page.headers
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    boxes = re.findall(r'<input type="checkbox" name="sections" value="([^"]+)" ?(checked)?>', html)
    assert boxes == [("Tech News", ""), ("In-Depth", ""), ("Expert Reviews", "checked")]
    radios = re.findall(r'<input type="radio" name="frequency" value="(\w+)" ?(checked)?>', html)
    assert radios == [("daily", ""), ("weekly", "checked")]
    assert 'name="name"' in html and 'value="Ada"' in html and ">Save</button>" in html
    assert "ada@example.com" in html
    unsubscribe = re.search(r'<form method="post" action="(/unsubscribe/[^"]+)">', html)
    assert unsubscribe, html  # the unsubscribe button, which works from here
    assert client.post(unsubscribe.group(1)).status_code == 200
    assert store_of(app).get_subscriber_by_id(sub.id).status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    assert 'action="/unsubscribe/' not in client.get(path).get_data(as_text=True)  # nothing left to stop


def test_no_weekly_edition_no_weekly_choice(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> None:
    settings = load_settings(choices_config(tmp_path, smtp_sink, weekly_day=""))
    store = Store(settings.database_url)
    store.migrate()
    try:
        client = create_app(settings, store=store).test_client()
        sub, _ = store.add_subscriber("d@example.com", None, now=NOW)
        path = f"/preferences/{Tokens(SECRET).preferences(sub.id)}"
        assert 'name="frequency"' not in client.get(path).get_data(as_text=True)
        weekly = client.post(path, data={"sections": ["In-Depth"], "frequency": "weekly"})
        assert weekly.status_code == 400 and "no weekly edition" in weekly.get_data(as_text=True)
        assert store.get_subscriber_by_id(sub.id).sections == ()  # type: ignore[union-attr]
        assert client.post(path, data={"sections": ["In-Depth"]}).status_code == 200  # daily: no field
        assert store.get_subscriber_by_id(sub.id).sections == ("In-Depth",)  # type: ignore[union-attr]
    finally:
        store.close()


def test_saving_a_form_stores_the_choice_and_shows_it_idempotently(app: Flask) -> None:
    client = app.test_client()
    sub, path = reader(app)
    form = {"sections": ["Expert Reviews", "Tech News"], "frequency": "weekly", "name": "Ada Lovelace"}
    first = client.post(path, data=form)
    assert first.status_code == 200 and "Saved" in first.get_data(as_text=True)
    assert snapshot(app, sub)[1:4] == ("Ada Lovelace", ("Expert Reviews", "Tech News"), Frequency.WEEKLY)
    second = client.post(path, data=form)
    assert second.status_code == 200 and second.get_data() == first.get_data()
    html = second.get_data(as_text=True)
    assert 'value="Tech News" checked' in html and 'value="In-Depth" >' in html
    assert 'value="weekly" checked' in html
    everything = client.post(path, data={"sections": list(SECTIONS), "frequency": "daily", "name": ""})
    assert everything.status_code == 200
    assert snapshot(app, sub)[1:4] == (None, (), Frequency.DAILY)  # every section: also those added later


def test_saving_json_answers_json(app: Flask) -> None:
    client = app.test_client()
    sub, path = reader(app)
    saved = client.post(path, json={"sections": ["In-Depth"], "frequency": "weekly"}, headers=JSON)
    assert saved.status_code == 200
    body = saved.get_json()
    assert body["sections"] == ["In-Depth"] and body["frequency"] == "weekly" and body["name"] == "Ada"
    assert body["subscribed"] is True and body["offered"]["sections"] == list(SECTIONS)
    assert client.get(path, headers=JSON).get_json() == body
    assert (
        client.post(path, json={"sections": ["In-Depth"], "frequency": "weekly"}, headers=JSON).get_json()
        == body
    )
    # the frequency left out keeps the reader's own; a name of null clears it
    kept = client.post(path, json={"sections": ["Tech News"], "name": None}, headers=JSON).get_json()
    assert kept["frequency"] == "weekly" and kept["name"] is None and kept["sections"] == ["Tech News"]


HOSTILE_FORMS: list[dict[str, object]] = [
    {"sections": ["Sports"]},
    {"sections": ["Tech News", "Sports"], "frequency": "daily"},
    {"frequency": "weekly"},  # no box ticked: an empty choice
    {"sections": [""]},
    {"sections": ["Tech News"], "frequency": "hourly"},
    {"sections": ["Tech News"], "frequency": "weekly\r\n"},
    {"sections": ["Tech News\x00"]},
    {"sections": ["Tech News\r\nBcc: x@example.com"]},
    {"sections": ["Tech News"], "name": "Ada\r\nBcc: x@example.com"},
    {"sections": ["Tech News"], "name": "Ann \u202egnp.exe"},
    {"sections": ["Tech News"], "name": "x" * 500},
    {"sections": ["x" * 20_000]},
    {},
]
HOSTILE_JSON: list[object] = [
    {"sections": "Tech News"},
    {"sections": {"Tech News": True}},
    {"sections": [["Tech News"]]},
    {"sections": [1, 2]},
    {"sections": [None]},
    {"sections": 3},
    {"sections": []},
    {"sections": ["Tech News"], "frequency": 1},
    {"sections": ["Tech News"], "frequency": ["weekly"]},
    {"sections": ["Tech News"], "frequency": "Weekly\x00"},
    {"sections": ["Tech News"], "name": 5},
    {"sections": ["Tech News"], "name": ["Ada"]},
    {"sections": ["Tech News"], "name": {"first": "Ada"}},
    {"sections": ["Tech News"], "name": "\ud800"},
    {"sections": ["Tech News\ud800"]},
    {"sections": ["Tech News"], "\ud800": "x"},
    [],
    ["Tech News"],
    "Tech News",
    5,
    None,
    {"sections": [["Tech News"] * 3] * 3},
]


def test_hostile_choices_are_400_naming_the_problem_and_change_nothing(app: Flask) -> None:
    client = app.test_client()
    sub, path = reader(app, preferences=Preferences(("In-Depth",), Frequency.WEEKLY))
    before = snapshot(app, sub)
    for form in HOSTILE_FORMS:
        answer = client.post(path, data=form)
        html = answer.get_data(as_text=True)
        assert answer.status_code == 400, (form, answer.status_code)
        assert "Nothing was changed" in html and 'class="error"' in html, form
        assert snapshot(app, sub) == before, form
    named = client.post(path, data={"sections": ["Sports <b>"]}).get_data(as_text=True)
    assert "there is no section &#39;Sports &lt;b&gt;&#39;" in named  # named, escaped
    assert "choose at least one section" in client.post(path, data={"frequency": "daily"}).get_data(
        as_text=True
    )
    assert "&#39;hourly&#39;" in client.post(
        path, data={"sections": "In-Depth", "frequency": "hourly"}
    ).get_data(as_text=True)
    for body in HOSTILE_JSON:
        answer = client.post(path, json=body, headers=JSON)
        assert answer.status_code == 400, (body, answer.status_code)
        assert answer.get_json()["error"].startswith("Nothing was changed"), body
        assert snapshot(app, sub) == before, body
    for raw, kind in [
        (b"{not json", "application/json"),
        (b"[" * 60_000, "application/json"),  # nested deeper than any parser recurses
        (b'{"sections": ["Tech News"]', "application/json"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b'{"sections": ["Tech News"]}', "text/plain"),
    ]:
        answer = client.post(path, data=raw, content_type=kind, headers=JSON)
        assert answer.status_code == 400, (raw[:20], answer.status_code)
        assert snapshot(app, sub) == before


def test_a_huge_body_is_413_and_changes_nothing(app: Flask) -> None:
    client = app.test_client()
    sub, path = reader(app)
    before = snapshot(app, sub)
    many = "&".join(["sections=Tech+News"] * (PUBLIC_BODY_LIMIT // 10))
    assert client.post(path, data=many, content_type="application/x-www-form-urlencoded").status_code == 413
    big_json = json.dumps({"sections": ["Tech News"], "name": "x" * PUBLIC_BODY_LIMIT})
    assert client.post(path, data=big_json, content_type="application/json").status_code == 413
    assert client.post(path, data=b"x" * (50 * 1024 * 1024)).status_code == 413
    assert snapshot(app, sub) == before


def test_a_bad_token_is_400_and_changes_nothing(app: Flask) -> None:
    client = app.test_client()
    sub, path = reader(app)
    other, _ = reader(app, "bob@example.com")
    before, others = snapshot(app, sub), snapshot(app, other)
    token = path.rsplit("/", 1)[1]
    tokens = Tokens(SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    changed = [
        token[:i] + (alphabet[(alphabet.index(c) + 1) % 64] if c in alphabet else "A") + token[i + 1 :]
        for i, c in enumerate(token)
    ]
    strangers = [
        tokens.unsubscribe(sub.id),  # another purpose's token for the same reader
        tokens.confirm(sub.id),
        Tokens("another-secret-key-entirely").preferences(sub.id),
        tokens.preferences(999_999),  # a reader who does not exist
        "garbage",
        "%00.%ff",
        "\u00e9.x",
        "a." * 3000,
    ]
    for bad in changed + strangers:
        for answer in (
            client.get(f"/preferences/{bad}"),
            client.post(f"/preferences/{bad}", data={"sections": ["Tech News"], "frequency": "weekly"}),
            client.post(f"/preferences/{bad}", json={"sections": ["Tech News"]}, headers=JSON),
        ):
            assert answer.status_code == 400, (bad, answer.status_code)
    assert "not valid" in client.get("/preferences/garbage").get_data(as_text=True)
    assert "error" in client.get("/preferences/garbage", headers=JSON).get_json()
    assert snapshot(app, sub) == before and snapshot(app, other) == others


def test_an_unsubscribed_or_closed_reader_stays_so_and_an_erased_one_has_no_page(app: Flask) -> None:
    client = app.test_client()
    store = store_of(app)
    sub, path = reader(app)
    store.unsubscribe(sub.id, now=NOW)
    page = client.get(path).get_data(as_text=True)
    assert "not subscribed" in page and 'action="/unsubscribe/' not in page
    saved = client.post(path, data={"sections": ["In-Depth"], "frequency": "weekly"})
    assert saved.status_code == 200 and "does not subscribe you again" in saved.get_data(as_text=True)
    after = store.get_subscriber_by_id(sub.id)
    assert (
        after is not None
        and after.status == SubscriberStatus.UNSUBSCRIBED
        and after.sections == ("In-Depth",)
    )
    assert store.subscriber_counts() == {"unsubscribed": 1}
    assert client.post(path, json={"sections": ["In-Depth"]}, headers=JSON).get_json()["subscribed"] is False
    store.erase_subscriber(sub.id, now=NOW)
    assert (
        client.get(path).status_code == 400
        and client.post(path, data={"sections": ["Tech News"]}).status_code == 400
    )


def test_no_csrf_token_is_asked_as_for_one_click_unsubscribes(app: Flask) -> None:
    """Flask-WTF's CSRF check guards the console's forms; this page, like the unsubscribe link,
    is its signed token (no cookie for another site to ride on), and saving twice changes nothing."""
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    _, path = reader(app)
    saved = client.post(
        path, data={"sections": ["In-Depth"]}, headers={"Origin": "https://elsewhere.example"}
    )
    assert saved.status_code == 200
    assert (
        client.post("/admin/login", data={"username": "x", "password": "y"}).status_code == 400
    )  # the console's is


# -- the link: in every mail, on the confirmation page --------------------------------------------


def _parts(raw: bytes) -> tuple[str, str]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return text, html


def test_every_digest_mail_links_its_readers_own_preference_page(app: Flask, smtp_sink: SmtpSink) -> None:
    client = app.test_client()
    store, settings = store_of(app), app.extensions["newsletter"].settings
    readers = [store.add_subscriber(f"r{i}@example.com", f"R & {i}", now=NOW)[0] for i in range(3)]
    now = datetime.now(UTC)
    _, (outcome, *_) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    send(settings, store, outcome.issue)
    tokens = Tokens(SECRET)
    for sub in readers:
        (received,) = smtp_sink.by_recipient()[sub.email]
        text, html = _parts(received.data)
        plain = re.search(r"Choose what you get: (\S+)", text)
        linked = re.search(r'<a href="([^"]+)"[^>]*>Choose what you get</a>', html)
        assert plain and linked, text
        assert plain.group(1) == linked.group(1)
        url = plain.group(1)
        assert url.startswith("https://news.example.com/preferences/")
        token = url.rsplit("/", 1)[1]
        assert tokens.read_preferences(token) == sub.id and sub.email not in url
        assert "__NL_" not in text + html  # every placeholder filled
        assert client.get(url.removeprefix("https://news.example.com")).status_code == 200
    archive = client.get(f"/archive/{outcome.issue.id}").get_data(as_text=True)
    assert "Choose what you get" in archive and "/preferences/" not in archive  # nobody's token


def test_the_confirmation_page_links_the_new_readers_preference_page(app: Flask, smtp_sink: SmtpSink) -> None:
    client = app.test_client()
    assert client.post("/subscribe", data={"email": "new@example.com"}).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    text, _ = _parts(smtp_sink.by_recipient()["new@example.com"][0].data)
    confirm = re.search(r"https://news\.example\.com(/confirm/\S+)", text)
    assert confirm
    done = client.post(confirm.group(1)).get_data(as_text=True)
    link = re.search(
        r'<a id="next-step" href="https://news\.example\.com(/preferences/[^"]+)">Choose what you get</a>',
        done,
    )
    assert link, done
    page = client.get(link.group(1))
    assert page.status_code == 200 and "new@example.com" in page.get_data(as_text=True)


# -- signup ---------------------------------------------------------------------------------------


def test_the_signup_form_offers_the_choices_and_the_confirmation_stores_them(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    client = app.test_client()
    form = client.get("/").get_data(as_text=True)
    assert re.findall(r'name="sections" value="([^"]+)" checked', form) == list(SECTIONS)
    assert 'name="frequency" value="weekly"' in form
    chosen = {"email": "picky@example.com", "sections": ["In-Depth"], "frequency": "weekly"}
    assert client.post("/subscribe", data=chosen).status_code == 200
    assert client.post("/subscribe", json={"email": "plain@example.com"}).status_code == 200
    everything = {"email": "all@example.com", "sections": list(SECTIONS), "frequency": "weekly"}
    assert client.post("/subscribe", data=everything).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    store = store_of(app)
    pending = store.get_subscriber("picky@example.com")
    assert pending is not None and pending.status == SubscriberStatus.PENDING and pending.sections == ()
    for address in ("picky@example.com", "plain@example.com", "all@example.com"):
        text, _ = _parts(smtp_sink.by_recipient()[address][0].data)
        confirm = re.search(r"https://news\.example\.com(/confirm/\S+)", text)
        assert confirm
        done = client.post(confirm.group(1)).get_data(as_text=True)
        assert ("every morning" if address == "plain@example.com" else "every Friday") in done
    picky, plain = store.get_subscriber("picky@example.com"), store.get_subscriber("plain@example.com")
    assert picky is not None and (picky.sections, picky.frequency) == (("In-Depth",), Frequency.WEEKLY)
    assert plain is not None and (plain.sections, plain.frequency) == ((), Frequency.DAILY)
    every = store.get_subscriber("all@example.com")
    assert every is not None and (every.sections, every.frequency) == ((), Frequency.WEEKLY)


def test_a_bad_choice_on_the_signup_form_is_400_and_stores_nothing(app: Flask, smtp_sink: SmtpSink) -> None:
    client = app.test_client()
    for fields in [
        {"email": "a@example.com", "sections": ["Sports"]},
        {"email": "a@example.com", "frequency": "hourly"},
        {"email": "a@example.com", "sections": ["Tech News"], "frequency": "monthly"},
    ]:
        refused = client.post("/subscribe", data=fields)
        assert refused.status_code == 400, fields
    named = client.post("/subscribe", json={"email": "a@example.com", "sections": ["Sports"]}, headers=JSON)
    assert named.status_code == 400 and "Sports" in named.get_json()["error"]
    for body in [
        {"email": "a@example.com", "sections": "Tech News"},
        {"email": "a@example.com", "sections": []},
    ]:
        assert client.post("/subscribe", json=body, headers=JSON).status_code == 400, body
    assert store_of(app).subscriber_counts() == {} and smtp_sink.messages == []


def test_one_section_and_no_weekly_edition_offer_no_choice(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    settings = load_settings(choices_config(tmp_path, smtp_sink, weekly_day="", sources=SAMPLES[:1]))
    store = Store(settings.database_url)
    store.migrate()
    try:
        form = create_app(settings, store=store).test_client().get("/").get_data(as_text=True)
        assert 'name="sections"' not in form and 'name="frequency"' not in form
    finally:
        store.close()


def test_a_confirm_link_clicked_again_keeps_what_the_reader_chose_since(
    app: Flask, smtp_sink: SmtpSink
) -> None:
    client = app.test_client()
    assert (
        client.post("/subscribe", data={"email": "c@example.com", "sections": ["In-Depth"]}).status_code
        == 200
    )
    assert app.extensions["newsletter"].confirmations.wait_idle()
    text, _ = _parts(smtp_sink.by_recipient()["c@example.com"][0].data)
    confirm = re.search(r"https://news\.example\.com(/confirm/\S+)", text)
    assert confirm and client.post(confirm.group(1)).status_code == 200
    sub = store_of(app).get_subscriber("c@example.com")
    assert sub is not None and sub.sections == ("In-Depth",)
    path = f"/preferences/{Tokens(SECRET).preferences(sub.id)}"
    assert client.post(path, data={"sections": ["Tech News"], "frequency": "weekly"}).status_code == 200
    assert client.post(confirm.group(1)).status_code == 200
    assert snapshot(app, sub)[2:4] == (("Tech News",), Frequency.WEEKLY)


# -- the command line -----------------------------------------------------------------------------


def test_subscribers_add_with_choices_and_bad_values_refused(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = choices_config(tmp_path, smtp_sink)
    run_cli(config, "init")
    added = run_cli(
        config,
        "subscribers",
        "add",
        "a@example.com",
        "--sections",
        "expert reviews,Tech News",
        "--frequency",
        "weekly",
    )
    assert "added: a@example.com" in added.stdout
    for args, needle in [
        (["--sections", "Sports"], "no section 'Sports'"),
        (["--sections", "Tech News,Sports"], "no section 'Sports'"),
        (["--sections", ""], "at least one section"),
        (["--frequency", "hourly"], "not 'hourly'"),
        (["--sections", "Tech News\x01"], "no section"),
    ]:
        refused = run_cli(config, "subscribers", "add", "b@example.com", *args, check=False)
        assert refused.returncode == 2 and needle in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
    changed = run_cli(config, "subscribers", "add", "a@example.com", "--frequency", "daily")
    assert "already present" in changed.stdout and "choices saved" in changed.stdout
    listed = json.loads(run_cli(config, "subscribers", "list", "--json").stdout)["subscribers"]
    assert [(s["email"], s["sections"], s["frequency"]) for s in listed] == [
        ("a@example.com", ["Tech News", "Expert Reviews"], "daily")
    ]
    table = run_cli(config, "subscribers", "list").stdout
    assert "Tech News, Expert Reviews" in table and "daily" in table


def test_csv_import_and_export_carry_the_choices_and_bad_lines_are_named(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    config = choices_config(tmp_path, smtp_sink)
    run_cli(config, "init")
    source = tmp_path / "in.csv"
    source.write_text(
        "email,name,sections,frequency\n"
        "a@example.com,Ann,Tech News;Expert Reviews,weekly\n"
        "b@example.com,Bob,,\n"
        "c@example.com,Cy,Sports,daily\n"
        "d@example.com,Di,In-Depth,hourly\n"
        "e@example.com,Ed,in-depth, Weekly \n"
        "f@example.com,Fay,;,daily\n"
        'g@example.com,Gus,"Tech News\r\nX",daily\n'
        "h@example.com,Hal,Tech News;In-Depth;Expert Reviews,\n",
        encoding="utf-8",
    )
    imported = run_cli(config, "subscribers", "import", str(source), check=False)
    assert imported.returncode == 0, imported.stderr
    bad = dict(re.findall(r"in\.csv:(\d+): skipped: (.*)", imported.stderr))
    assert set(bad) == {"4", "5", "7", "9"}, imported.stderr  # line 8-9 is one quoted row
    assert "'Sports'" in bad["4"] and "'hourly'" in bad["5"] and "at least one section" in bad["7"]
    assert "imported 4 new" in imported.stdout
    listed = {
        s["email"]: s
        for s in json.loads(run_cli(config, "subscribers", "list", "--json").stdout)["subscribers"]
    }
    assert (listed["a@example.com"]["sections"], listed["a@example.com"]["frequency"]) == (
        ["Tech News", "Expert Reviews"],
        "weekly",
    )
    assert (listed["b@example.com"]["sections"], listed["b@example.com"]["frequency"]) == ([], "daily")
    assert (listed["e@example.com"]["sections"], listed["e@example.com"]["frequency"]) == (
        ["In-Depth"],
        "weekly",
    )
    assert listed["h@example.com"]["sections"] == []  # every section is all of them
    exported = tmp_path / "out.csv"
    run_cli(config, "subscribers", "export", str(exported))
    rows = {r["email"]: r for r in csv.DictReader(io.StringIO(exported.read_text()))}
    assert (
        rows["a@example.com"]["sections"] == "Expert Reviews;Tech News"
        and rows["a@example.com"]["frequency"] == "weekly"
    )
    assert rows["b@example.com"]["sections"] == "" and rows["b@example.com"]["frequency"] == "daily"
    # what was exported imports again, the same, into another list
    again = tmp_path / "again"
    again.mkdir()
    other = choices_config(again, smtp_sink)
    run_cli(other, "init")
    assert "0 bad rows" in run_cli(other, "subscribers", "import", str(exported)).stdout
    relisted = json.loads(run_cli(other, "subscribers", "list", "--json").stdout)["subscribers"]
    assert {s["email"]: (s["sections"], s["frequency"]) for s in relisted} == {
        e: (s["sections"], s["frequency"]) for e, s in listed.items()
    }


# -- the console ----------------------------------------------------------------------------------


def test_the_console_shows_filters_and_counts_readers_by_choice(app: Flask) -> None:
    from newsletter.operators import hash_password

    from ..support.helpers import PASSWORD

    store = store_of(app)
    store.save_operator("ed", hash_password(PASSWORD), now=NOW)
    store.add_subscriber("all@example.com", None, now=NOW)
    store.add_subscriber(
        "rev@example.com", None, now=NOW, preferences=Preferences(("Expert Reviews",), Frequency.WEEKLY)
    )
    store.add_subscriber(
        "tech@example.com", None, now=NOW, preferences=Preferences(("Tech News", "In-Depth"))
    )
    gone, _ = store.add_subscriber(
        "gone@example.com", None, now=NOW, preferences=Preferences(("Expert Reviews",))
    )
    store.unsubscribe(gone.id, now=NOW)
    client = app.test_client()
    assert log_in(client) == 302

    def listed(query: str) -> list[str]:
        page = client.get(f"/admin/subscribers?{query}")
        assert page.status_code == 200
        return re.findall(r"<td>([\w.]+@example\.com)</td>", page.get_data(as_text=True))

    assert listed("") == ["all@example.com", "rev@example.com", "tech@example.com", "gone@example.com"]
    assert listed("frequency=weekly") == ["rev@example.com"]
    assert listed("section=Expert+Reviews") == ["all@example.com", "rev@example.com", "gone@example.com"]
    assert listed("section=Expert+Reviews&status=active") == ["all@example.com", "rev@example.com"]
    assert listed("section=In-Depth&frequency=daily") == ["all@example.com", "tech@example.com"]
    assert listed("section=Nope&frequency=hourly") == listed("")  # unknown filters are no filter
    page = client.get("/admin/subscribers").get_data(as_text=True)
    assert "<td>weekly</td><td>Expert Reviews</td>" in page and "<td>daily</td><td>all</td>" in page
    assert "<td>daily</td><td>Tech News, In-Depth</td>" in page
    dashboard = client.get("/admin/").get_data(as_text=True)
    counts = dict(re.findall(r'section=[^"]*">([^<]+)</a></th><td>([\d,]+)</td>', dashboard))
    assert counts == {"Tech News": "2", "In-Depth": "2", "Expert Reviews": "2"}  # active readers only
    frequencies = dict(re.findall(r'frequency=\w+">(\w+)</a></th><td>([\d,]+)</td>', dashboard))
    assert frequencies == {"daily": "2", "weekly": "1"}


# -- as a reader does it: a real server, a real mail, Chromium --------------------------------------


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[str, Path]]:
    """`newsletter serve` on a free loopback port, with three sections and a weekly edition."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = choices_config(tmp_path, smtp_sink)
    config.write_text(config.read_text().replace("https://news.example.com", url))
    run_cli(config, "init")
    with serving(config, port):
        yield url, config


def _preference_link(sink: SmtpSink, address: str) -> str:
    text, _ = _parts(sink.by_recipient()[address][-1].data)
    found = re.search(r"Choose what you get: (\S+)", text)
    assert found, text
    return found.group(1)


def test_the_real_server_refuses_a_huge_or_forged_save_and_changes_nothing(
    served: tuple[str, Path], smtp_sink: SmtpSink
) -> None:
    import httpx

    url, config = served
    run_cli(config, "subscribers", "add", "real@example.com", "--sections", "In-Depth")
    run_cli(config, "run")
    link = _preference_link(smtp_sink, "real@example.com")
    assert link.startswith(url + "/preferences/")
    huge = "&".join(["sections=Tech+News"] * 10_000).encode()  # 190 KB: over the public 64 KB
    assert len(huge) > PUBLIC_BODY_LIMIT
    refused = httpx.post(link, content=huge, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert refused.status_code == 413
    forged = link[:-1] + ("A" if link[-1] != "A" else "B")
    assert httpx.post(forged, data={"sections": "Tech News"}).status_code == 400
    assert httpx.post(link, json={"sections": "Tech News"}).status_code == 400
    (listed,) = json.loads(run_cli(config, "subscribers", "list", "--json").stdout)["subscribers"]
    assert (listed["sections"], listed["frequency"]) == (["In-Depth"], "daily")


@needs_chromium
def test_a_reader_chooses_one_section_weekly_from_the_link_in_their_mail_in_chromium(
    served: tuple[str, Path], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    url, config = served
    run_cli(config, "subscribers", "add", "reader@example.com", "--name", "Grace Reader")
    run_cli(config, "run")  # today's issue, mailed
    link = _preference_link(smtp_sink, "reader@example.com")
    shots = screenshots(tmp_path, "screenshots")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 900, "height": 1100})
        page.goto(link)
        assert page.inner_text("h2") == "Choose what you get"
        assert page.is_checked("input[value='Tech News']") and page.is_checked("input[value='daily']")
        page.screenshot(path=str(shots / "1-choices.png"), full_page=True)
        page.uncheck("input[value='Tech News']")
        page.uncheck("input[value='In-Depth']")
        page.check("input[value='weekly']")
        page.click("button:has-text('Save')")
        page.wait_for_selector("p.ok")
        assert "Saved" in page.inner_text("p.ok")
        assert page.is_checked("input[value='Expert Reviews']") and not page.is_checked(
            "input[value='Tech News']"
        )
        assert page.is_checked("input[value='weekly']")
        page.screenshot(path=str(shots / "2-saved.png"), full_page=True)
        page.uncheck("input[value='Expert Reviews']")  # nothing at all: refused, nothing changed
        page.click("button:has-text('Save')")
        page.wait_for_selector("p.error")
        assert "at least one section" in page.inner_text("p.error")
        page.screenshot(path=str(shots / "3-empty-refused.png"), full_page=True)
        assert context_cookies(page) == []  # no login, no cookie
    (listed,) = json.loads(run_cli(config, "subscribers", "list", "--json").stdout)["subscribers"]
    assert (listed["sections"], listed["frequency"], listed["status"]) == (
        ["Expert Reviews"],
        "weekly",
        "active",
    )
    # the next weekly issue (the coming Friday's) holds only that section; no daily issue reaches them
    day = datetime.now(UTC).date()  # the config's timezone is UTC
    friday = day + timedelta(days=(4 - day.weekday()) % 7 or 7)
    run_cli(config, "run", "--date", friday.isoformat())
    mails = smtp_sink.by_recipient()["reader@example.com"]
    assert len(mails) == 2  # today's daily issue, then the weekly one
    weekly = email.message_from_bytes(mails[-1].data, policy=policy.default)
    assert str(weekly["Subject"]).startswith("Week to ")
    text, html = _parts(mails[-1].data)
    assert "== EXPERT REVIEWS ==" in text or "/ Expert Reviews" in text
    for other in ("Tech News", "In-Depth"):
        assert f"== {other.upper()} ==" not in text and f"/ {other}" not in text
        assert f">{other}</" not in html  # no heading nor kicker of it
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 900, "height": 1100})
        page.set_content(html)
        assert "Expert Reviews" in page.inner_text("body") and "week" in page.inner_text("body")
        page.screenshot(path=str(shots / "4-weekly-issue.png"), full_page=True)
    assert sorted(f.name for f in shots.iterdir()) == [
        "1-choices.png",
        "2-saved.png",
        "3-empty-refused.png",
        "4-weekly-issue.png",
    ]


def context_cookies(page: object) -> list[object]:
    return list(page.context.cookies())  # type: ignore[attr-defined]

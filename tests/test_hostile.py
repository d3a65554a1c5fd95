"""What a stranger sends cannot hurt the list: every page and route of `newsletter serve` tried with
hostile values in every field a stranger controls (a signup, a feed, a bounce, a CSV, a request
line), through Flask's test client on a real SQLite file, with mail over real SMTP."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from newsletter.bounces.classify import classify
from newsletter.bounces.policy import BouncePolicy
from newsletter.db.models import Delivery, DeliveryStatus
from newsletter.delivery.tokens import Tokens
from newsletter.store import Store

from . import bounce_mails as m
from .conftest import SECRET, Console, log_in, token

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

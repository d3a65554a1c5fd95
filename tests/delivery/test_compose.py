"""The fast splice gives the same message as the standard library's slow way."""

import email
import random
from email import policy
from email.message import EmailMessage

import pytest

from newsletter.config import Settings, mailbox
from newsletter.content.render import (
    FIXED_PLACEHOLDERS,
    Placeholders,
    RenderedIssue,
    fill,
    greeting_for,
)
from newsletter.delivery.compose import MessageTemplate, Recipient, qp_encode

NAMES = Placeholders.new()
HTML = (
    f'<html><body><p style="color:#333">{NAMES.greeting} Caf\u00e9 news = good</p>\n'
    + "<p>"
    + "long line " * 40
    + f'</p><a href="{NAMES.unsubscribe_url}">Unsubscribe</a>\n'
    "<p>.dot at start</p>\n</body></html>"
)
TEXT = (
    f"{NAMES.greeting} Here are today's headlines.\n\nTrailing space \nUnsubscribe: {NAMES.unsubscribe_url}\n"
)
ISSUE = RenderedIssue(
    subject="25 Nov 2026: Zo\u00eb's r\u00e9sum\u00e9 of the long, long week in tech news",
    preheader="p",
    html=HTML,
    text=TEXT,
    placeholders=NAMES,
)


def template(issue: RenderedIssue = ISSUE) -> MessageTemplate:
    return MessageTemplate(
        issue,
        issue_id=3,
        newsletter_name="Test Digest",
        sender=mailbox("Test Digest", "digest@example.com"),
        reply_to=mailbox(None, "editor@example.com"),
        base_url="https://news.example.com/",
    )


def slow(recipient: Recipient) -> EmailMessage:
    """The same message built with the standard library, as a naive sender would."""
    url = f"https://news.example.com/unsubscribe/{recipient.unsubscribe_token}"
    greeting = greeting_for(recipient.name)
    msg = EmailMessage()
    msg["From"] = "Test Digest <digest@example.com>"
    msg["To"] = (
        email.utils.formataddr((recipient.name, recipient.email)) if recipient.name else recipient.email
    )
    msg["Subject"] = ISSUE.subject
    msg["Reply-To"] = "editor@example.com"
    msg["List-Unsubscribe"] = f"<{url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["List-Id"] = "Test Digest <test-digest.news.example.com>"
    msg.set_content(fill(TEXT, NAMES, greeting=greeting, unsubscribe_url=url, for_html=False))
    msg.add_alternative(
        fill(HTML, NAMES, greeting=greeting, unsubscribe_url=url, for_html=True), subtype="html"
    )
    return msg


def body(msg: email.message.Message, kind: str) -> str:
    part = msg.get_body((kind,))  # type: ignore[attr-defined]
    return str(part.get_content()).replace("\r\n", "\n")


@pytest.mark.parametrize(
    "name", [None, "Ada Lovelace", "Zo\u00eb Ch\u00e2telet", 'Smith, "J" <x>', "A very long name " * 4]
)
def test_spliced_message_equals_the_slow_one(name: str | None) -> None:
    recipient = Recipient(42, "ada@example.com", name, "TOKEN.abc-_")
    fast = email.message_from_bytes(template().compose(recipient), policy=policy.default)
    want = email.message_from_bytes(slow(recipient).as_bytes(policy=policy.SMTP), policy=policy.default)
    assert fast.get_content_type() == "multipart/alternative"
    for header in (
        "From",
        "To",
        "Subject",
        "Reply-To",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
    ):
        assert str(fast[header]) == str(want[header]), header
    for kind in ("plain", "html"):
        assert body(fast, kind) == body(want, kind)
    assert fast["Message-ID"].endswith("@example.com>") and fast["Date"]
    assert fast["Auto-Submitted"] == "auto-generated"
    assert fast.get_body(("plain",))["Content-Type"].params["charset"] == "utf-8"


def test_only_the_issues_own_placeholders_are_filled() -> None:
    """Text that looks like a placeholder (the fixed names, a guessed key) stays text in an issue
    with its own key: a reader's link and name go only where the issue's own names are."""
    lookalikes = " ".join(
        (*(getattr(FIXED_PLACEHOLDERS, n) for n in ("greeting", "unsubscribe_url", "issue_id")),)
        + (Placeholders.of("0" * 32).unsubscribe_url, Placeholders.of(NAMES.key + "0").greeting)
    )
    issue = RenderedIssue(
        "s", "p", html=f"<p>{lookalikes}</p>{HTML}", text=f"{lookalikes}\n{TEXT}", placeholders=NAMES
    )
    fast = email.message_from_bytes(
        template(issue).compose(Recipient(42, "ada@example.com", "Ada Lovelace", "TOKEN.abc-_")),
        policy=policy.default,
    )
    for kind in ("plain", "html"):
        part = body(fast, kind)
        assert lookalikes in part and NAMES.greeting not in part and NAMES.unsubscribe_url not in part
        assert part.count("TOKEN.abc-_") == 1 and part.count("Ada") == 1


def test_an_issue_stored_before_its_key_fills_the_fixed_names() -> None:
    fixed = FIXED_PLACEHOLDERS
    issue = RenderedIssue(
        "s",
        "p",
        html=f'<p>{fixed.greeting}</p><a href="{fixed.unsubscribe_url}">u</a>',
        text=f"{fixed.greeting}\n{fixed.unsubscribe_url}\n",
    )
    assert issue.placeholders == fixed and fixed.key is None
    fast = email.message_from_bytes(
        template(issue).compose(Recipient(42, "ada@example.com", "Ada Lovelace", "TOKEN.abc-_")),
        policy=policy.default,
    )
    assert body(fast, "plain") == "Good morning, Ada.\nhttps://news.example.com/unsubscribe/TOKEN.abc-_\n"
    assert 'href="https://news.example.com/unsubscribe/TOKEN.abc-_"' in body(fast, "html")


def test_message_ids_are_unique_and_lines_short() -> None:
    t = template()
    raw = [t.compose(Recipient(i, f"u{i}@example.com", None, f"t{i}")) for i in range(200)]
    ids = {email.message_from_bytes(r, policy=policy.default)["Message-ID"] for r in raw}
    assert len(ids) == 200
    for r in raw[:3]:
        assert all(len(line) <= 998 for line in r.split(b"\r\n"))
        body = r.split(b"\r\n\r\n", 1)[1]
        assert all(len(line) <= 76 for line in body.split(b"\r\n"))
        assert b"\n" not in r.replace(b"\r\n", b"")


def test_quoted_printable_round_trips_random_text() -> None:
    rng = random.Random(7)
    alphabet = "ab =.\t\u00e9\u20ac\U0001f600\n" + "x" * 10
    import quopri

    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        encoded = qp_encode(text)
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
        assert quopri.decodestring(encoded).decode("utf-8") == text.replace("\n", "\r\n")


HOSTILE_NAMES = [
    'Zo\u00eb \\" , evil@x.example',
    'Zo\u00eb " , evil@x.example',
    'Zo\u00eb", evil@x.example <',
    "Zo\u00eb " * 12 + '\\" , evil@x.example',  # long: folded over lines
    'Ann "the" Reader, <evil@x.example>',
    "=?utf-8?q?evil=40x=2Eexample?= , <evil@x.example>",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_never_adds_an_address(name: str, settings: Settings) -> None:
    """To is built from an Address object: whatever the name, one recipient, read back whole."""
    from email.utils import getaddresses

    from newsletter.delivery.compose import confirmation_message

    digest = template().compose(Recipient(9, "reader@example.com", name, "tok"))
    confirm = confirmation_message(
        settings, to_email="reader@example.com", to_name=name, confirm_url="https://n.example/c/t"
    )
    for data in (digest, confirm):
        head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
        raw = email.message_from_string(head + "\r\n\r\n")["To"]  # the unparsed value, as an MTA sees it
        assert [a for _, a in getaddresses([raw])] == ["reader@example.com"], raw
        parsed = email.message_from_bytes(data, policy=policy.default)["To"]
        assert [str(a.addr_spec) for a in parsed.addresses] == ["reader@example.com"], raw
        if "=?" not in name:  # (a literal encoded word in a name is decoded by readers: text, still one)
            assert " ".join(parsed.addresses[0].display_name.split()) == " ".join(name.split())

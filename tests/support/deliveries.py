"""Setting up an issue, its readers, its senders and their claims straight through the store, and
sending it with the engine over real SMTP, for the tests of the delivery ledger, of the send loop
and of what a send does to subscribers."""

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from newsletter.config import mailbox
from newsletter.content.render import GREETING, UNSUBSCRIBE_URL, RenderedIssue
from newsletter.delivery.compose import MessageTemplate
from newsletter.delivery.engine import SendOptions, SendReport, send_issue
from newsletter.delivery.records import WHOLE_ISSUE, Audience, DeliveryTarget, Enrolment, Group, MarkResult
from newsletter.delivery.tokens import Tokens
from newsletter.delivery.transport import SmtpTransport
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from .helpers import SECRET, SmtpSink

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def make_issue(
    store: Store,
    day: date = date(2026, 11, 25),
    *,
    content: tuple[str, str, str, str] = ("S", "P", "<p>h</p>", "t"),
    story_ids: list[int] | None = None,
    now: datetime = NOW,
) -> int:
    """An issue stored for `day` at `now`, of `story_ids` (one item each) or of no stories:
    `content` is its (subject, preheader, HTML, text)."""
    ids = story_ids or []
    issue = store.create_issue(
        day,
        story_ids=ids,
        items=[[i] for i in ids] or None,
        content=lambda i: content,
        placeholder_key=None,
        now=now,
    )
    assert issue is not None
    return issue.id


def issue_of(store: Store, day: int, story_ids: list[int], subject: str) -> int:
    """An issue of `story_ids` with `subject` for the `day`th day after 1 October 2026, stored
    `day` days after NOW."""
    when = date(2026, 10, 1) + timedelta(days=day)
    content = (subject, "", "<p>__NL_UNSUBSCRIBE_URL__</p>", "t")
    return make_issue(store, when, content=content, story_ids=story_ids, now=NOW + timedelta(days=day))


def issue_with_readers(store: Store, n: int, domain: str = "example.com") -> int:
    """n active readers, userI@domain named "User I", and an issue for them."""
    store.import_subscribers([NewSubscriber(f"user{i}@{domain}", f"User {i}") for i in range(n)], now=NOW)
    return make_issue(store, content=("Today", "", "", ""))


# -- sending an issue with the engine -----------------------------------------------------------

ISSUE = RenderedIssue(
    subject="Today",
    preheader="",
    html=f"<p>{GREETING}</p><a href='{UNSUBSCRIBE_URL}'>u</a>\n<p>.a line that starts with a dot</p>",
    text=f"{GREETING}\n{UNSUBSCRIBE_URL}\n.\n..two dots\n",
)
TEMPLATE_ARGS: dict[str, Any] = {
    "newsletter_name": "T",
    "sender": mailbox("T", "t@example.com"),
    "reply_to": None,
    "base_url": "https://n.example.com",
}
# retries and throttling in hundredths of a second: what they do, without the real waits
FAST_RETRIES = {"retry_base_seconds": 0.05, "throttle_retry_seconds": 0.05, "throttle_recover_seconds": 0.5}


def template(issue_id: int) -> MessageTemplate:
    return MessageTemplate(ISSUE, issue_id=issue_id, **TEMPLATE_ARGS)


def smtp(sink: SmtpSink) -> SmtpTransport:
    return SmtpTransport("127.0.0.1", sink.port, security="none", timeout=5)


def run_send(
    store: Store,
    connect: Any,
    issue_id: int,
    *,
    resend_unknown: bool = False,
    variants: dict[int, MessageTemplate] | None = None,
    **options: Any,
) -> SendReport:
    """The engine's send of `issue_id` over `connect()`'s transports, with `options` (SendOptions')."""
    return send_issue(
        store,
        connect,
        template(issue_id),
        Tokens(SECRET),
        issue_id=issue_id,
        variants=variants,
        mail_from="bounces@example.com",
        options=SendOptions(**options),
        resend_unknown=resend_unknown,
    )


def with_renderings(store: Store, issue_id: int, n: int) -> dict[int, MessageTemplate]:
    """Readers user0..user{n-1} dealt round three renderings of the issue: its own ("Today") for
    userI with I % 3 == 0, "Today A" for 1, "Today B" for 2; the audience fixed with them, as
    delivery.sending does. Returns the renderings' templates, by id."""
    from newsletter.subscribers.records import Preferences

    chosen = [(), ("A",), ("B",)]
    for i in range(n):
        sub = store.get_subscriber(f"user{i}@example.com")
        assert sub is not None
        store.set_preferences(sub.id, Preferences(chosen[i % 3]), name=sub.name)
    for key in chosen[1:]:
        store.add_variant(issue_id, key, (f"Today {key[0]}", "", ISSUE.html, ISSUE.text, 1), None)
    ids = {v.sections: v.id for v in store.issue_variants(issue_id)}
    audience = Audience(key_of=lambda c: c or ("A", "B"), variants={("A", "B"): WHOLE_ISSUE, **ids})
    assert store.start_send(issue_id, audience) == n
    return {
        ids[key]: MessageTemplate(
            replace(ISSUE, subject=f"Today {key[0]}"), issue_id=issue_id, **TEMPLATE_ARGS
        )
        for key in chosen[1:]
    }


def rendering_of(i: int) -> str:
    """The subject userI's rendering has (with_renderings)."""
    return ["Today", "Today A", "Today B"][i % 3]


LEASE = timedelta(minutes=10)


def alive(_host: str, _pid: int) -> bool | None:
    return True


def dead(_host: str, _pid: int) -> bool | None:
    return False


def claim(
    store: Store, issue_id: int, sender: str, *, now: datetime, limit: int, lease: timedelta = LEASE
) -> list[DeliveryTarget]:
    ledger = store.ledger(issue_id, sender)
    try:
        return ledger.commit(Group(now, claim=limit, lease=lease)).claimed
    finally:
        ledger.close()


def mark(store: Store, issue_id: int, sender: str, *subscriber_ids: int) -> list[MarkResult]:
    ledger = store.ledger(issue_id, sender)
    try:
        marks = ledger.commit(Group(NOW, marks=subscriber_ids)).marks
        return [marks[i] for i in subscriber_ids]
    finally:
        ledger.close()


def enrol(
    store: Store,
    issue_id: int,
    sender: str,
    *,
    exclusive: bool = False,
    is_alive: Callable[[str, int], bool | None] = alive,
) -> int:
    return store.register_sender(
        Enrolment(
            issue_id,
            sender,
            host="h",
            pid=1,
            now=NOW,
            exclusive=exclusive,
            stale_after=timedelta(seconds=30),
            is_alive=is_alive,
        )
    )

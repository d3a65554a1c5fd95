"""The send loop over real SMTP (aiosmtpd on loopback) and a real SQLite file."""

import email
from datetime import UTC, date, datetime
from email import policy
from typing import Any

from newsletter.compose import MessageTemplate
from newsletter.deliver import SendOptions, SendReport, send_issue
from newsletter.models import DeliveryStatus
from newsletter.render import GREETING, UNSUBSCRIBE_URL, RenderedIssue
from newsletter.store import NewSubscriber, Store
from newsletter.tokens import Tokens
from newsletter.transport import OutboxTransport, SmtpTransport, Transport, classify_reply

from .conftest import SECRET, SmtpSink

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
ISSUE = RenderedIssue(
    subject="Today",
    preheader="",
    html=f"<p>{GREETING}</p><a href='{UNSUBSCRIBE_URL}'>u</a>",
    text=f"{GREETING}\n{UNSUBSCRIBE_URL}\n",
)


def setup(store: Store, n: int) -> int:
    store.import_subscribers([NewSubscriber(f"user{i}@example.com", f"User {i}") for i in range(n)], now=NOW)
    issue = store.create_issue(
        date(2026, 11, 25), story_ids=[], render=lambda i: ("Today", "", "", ""), now=NOW
    )
    assert issue is not None
    return issue.id


def template(issue_id: int) -> MessageTemplate:
    return MessageTemplate(
        ISSUE,
        issue_id=issue_id,
        newsletter_name="T",
        sender="T <t@example.com>",
        reply_to=None,
        base_url="https://n.example.com",
    )


def run_send(store: Store, transport: Transport, issue_id: int, **options: Any) -> SendReport:
    return send_issue(
        store,
        transport,
        template(issue_id),
        Tokens(SECRET),
        issue_id=issue_id,
        mail_from="bounces@example.com",
        **options,
    )


def smtp(sink: SmtpSink) -> SmtpTransport:
    return SmtpTransport("127.0.0.1", sink.port, security="none", timeout=5)


def test_each_active_subscriber_gets_one_message_and_a_rerun_sends_nothing(
    sqlite_store: Store, smtp_sink: SmtpSink
) -> None:
    issue_id = setup(sqlite_store, 30)
    sqlite_store.add_subscriber("left@example.com", None, now=NOW)
    left = sqlite_store.get_subscriber("left@example.com")
    assert left is not None
    sqlite_store.unsubscribe(left.id, now=NOW)
    tokens = Tokens(SECRET)
    transport = smtp(smtp_sink)
    report = run_send(
        sqlite_store,
        transport,
        issue_id,
    )
    assert report.sent == 30 and report.finished
    again = run_send(
        sqlite_store,
        transport,
        issue_id,
    )
    transport.close()
    assert again.sent == 0 and again.added == 0
    got = smtp_sink.by_recipient()
    assert len(smtp_sink.messages) == 30 and all(len(v) == 1 for v in got.values())
    assert "left@example.com" not in got
    msg = email.message_from_bytes(got["user7@example.com"][0].data, policy=policy.default)
    token = str(msg["List-Unsubscribe"]).rsplit("/", 1)[1].rstrip(">")
    assert sqlite_store.get_subscriber_by_id(tokens.read_unsubscribe(token)).email == "user7@example.com"  # type: ignore[union-attr]
    assert "user7@example.com" not in token
    assert "Good morning, User." in msg.get_body(("plain",)).get_content()
    assert sqlite_store.get_issue(issue_id).status == "sent"  # type: ignore[union-attr]


def test_replies_decide_the_fate(sqlite_store: Store, smtp_sink: SmtpSink) -> None:
    issue_id = setup(sqlite_store, 6)
    tries: dict[str, int] = {}

    def hook(address: str) -> str | None:
        tries[address] = tries.get(address, 0) + 1
        if address == "user1@example.com":
            return "550 5.1.1 no such user"
        if address == "user2@example.com" and tries[address] == 1:
            return "451 4.7.1 try again later"
        if address == "user3@example.com":
            return "452 4.2.2 mailbox full"
        return None

    smtp_sink.rcpt_hook = hook
    clock = [NOW]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] = clock[0].fromtimestamp(clock[0].timestamp() + seconds + 1, tz=UTC)

    transport = smtp(smtp_sink)
    report = run_send(
        sqlite_store,
        transport,
        issue_id,
        options=SendOptions(max_attempts=3, retry_base_seconds=10),
        now=lambda: clock[0],
        sleep=sleep,
    )
    transport.close()
    assert report.finished and slept  # it waited for the retries, on the injected clock
    got = smtp_sink.by_recipient()
    assert set(got) == {"user0@example.com", "user2@example.com", "user4@example.com", "user5@example.com"}
    assert all(len(v) == 1 for v in got.values())
    assert tries["user3@example.com"] == 3
    counts = sqlite_store.issue_counts(issue_id)[0].deliveries
    assert counts["sent"] == 4 and counts["bounced"] == 1 and counts["failed"] == 1
    bounced = sqlite_store.get_subscriber("user1@example.com")
    assert bounced is not None and bounced.status == "bounced"


def test_unsubscribe_during_the_send_stops_later_messages(sqlite_store: Store, tmp_path: object) -> None:
    issue_id = setup(sqlite_store, 10)
    last = sqlite_store.get_subscriber("user9@example.com")
    assert last is not None
    outbox = OutboxTransport(tmp_path / "outbox")  # type: ignore[operator]
    handled = []

    def on_result(status: DeliveryStatus) -> None:
        handled.append(status)
        if len(handled) == 2:  # mid-send, as the web app would
            sqlite_store.unsubscribe(last.id, now=NOW)

    report = run_send(
        sqlite_store,
        outbox,
        issue_id,
        on_result=on_result,
    )
    assert report.sent == 9 and report.counts.get("skipped") == 1
    files = list((tmp_path / "outbox").rglob("*.eml"))  # type: ignore[operator]
    assert len(files) == 9
    assert not any(b"user9@example.com" in f.read_bytes() for f in files)


def test_a_row_left_in_flight_is_unknown_and_not_resent_unless_asked(
    sqlite_store: Store, smtp_sink: SmtpSink
) -> None:
    issue_id = setup(sqlite_store, 3)
    sqlite_store.start_send(issue_id)
    first = sqlite_store.due_targets(issue_id, now=NOW, after=0, limit=1)[0]
    sqlite_store.claim(issue_id, first.subscriber_id, now=NOW)  # a sender died here, mid-DATA
    transport = smtp(smtp_sink)
    report = run_send(
        sqlite_store,
        transport,
        issue_id,
    )
    assert report.unknown_found == 1 and report.sent == 2
    assert "user0@example.com" not in smtp_sink.by_recipient()
    again = run_send(
        sqlite_store,
        transport,
        issue_id,
        resend_unknown=True,
    )
    transport.close()
    assert again.requeued == 1 and again.sent == 1
    assert {r: len(v) for r, v in smtp_sink.by_recipient().items()} == {
        "user0@example.com": 1,
        "user1@example.com": 1,
        "user2@example.com": 1,
    }


def test_reply_classification() -> None:
    assert classify_reply(250, "ok", stage="DATA").status == DeliveryStatus.SENT
    assert classify_reply(451, "try later", stage="RCPT").status == DeliveryStatus.DEFERRED
    assert classify_reply(421, "Too many connections", stage="RCPT").throttled
    assert classify_reply(550, "no such user", stage="RCPT").status == DeliveryStatus.BOUNCED
    assert classify_reply(554, "content rejected", stage="DATA").status == DeliveryStatus.FAILED

"""The send loop over real SMTP (aiosmtpd on loopback, with faults injected) and a real SQLite file."""

import email
import threading
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy import text as sql

from newsletter.db.models import Delivery, DeliveryStatus, Sender
from newsletter.delivery.compose import MessageTemplate, Recipient
from newsletter.delivery.engine import RateLimiter, SendOptions, SendReport, send_issue
from newsletter.delivery.pacing import reconnect_wait
from newsletter.delivery.records import Enrolment, Group
from newsletter.delivery.tokens import Tokens
from newsletter.delivery.transport import Envelope, OutboxTransport, SmtpTransport, classify_reply
from newsletter.errors import NewsletterError, SendBusyError, TransportError
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.deliveries import (
    FAST_RETRIES,
    ISSUE,
    NOW,
    TEMPLATE_ARGS,
    claim,
    issue_with_readers,
    rendering_of,
    run_send,
    smtp,
    template,
    with_renderings,
)
from ..support.helpers import SECRET, Gate, SmtpSink, assert_tally_counts, free_port


def copies(sink: SmtpSink) -> dict[str, int]:
    return {r: len(m) for r, m in sink.by_recipient().items()}


@pytest.mark.parametrize("processes", [1, 2])
def test_each_active_subscriber_gets_one_message_and_a_rerun_sends_nothing(
    sqlite_store: Store, smtp_sink: SmtpSink, processes: int
) -> None:
    issue_id = issue_with_readers(sqlite_store, 300)
    sub, _ = sqlite_store.add_subscriber("left@example.com", None, now=NOW)
    sqlite_store.unsubscribe(sub.id, now=NOW)
    report = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, connections=4, processes=processes)
    assert report.sent == 300 and report.finished
    again = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, connections=4, processes=processes)
    assert again.sent == 0 and again.added == 0
    got = copies(smtp_sink)
    assert len(got) == 300 and set(got.values()) == {1} and "left@example.com" not in got
    assert smtp_sink.connections <= 8  # sessions are reused, not opened per message
    raw = smtp_sink.by_recipient()["user7@example.com"][0].data
    msg = email.message_from_bytes(raw, policy=policy.default)
    token = str(msg["List-Unsubscribe"]).rsplit("/", 1)[1].rstrip(">")
    assert Tokens(SECRET).read_unsubscribe(token) == sqlite_store.get_subscriber("user7@example.com").id  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "\n.\n..two dots\n" in text.replace("\r\n", "\n")  # dot-stuffing undone by the server
    assert sqlite_store.get_issue(issue_id).status == "sent"  # type: ignore[union-attr]


@pytest.mark.parametrize("processes", [1, 2])
def test_faults_every_good_address_gets_exactly_one_copy(
    sqlite_store: Store, smtp_sink: SmtpSink, processes: int
) -> None:
    """451 on every 7th RCPT, 550 for one domain, a burst of 421 "too many connections", the
    connection dropped at every 60th RCPT (before the message: retried) and instead of every 50th
    DATA reply (after the final dot, the message lost: unknown, resent on the operator's word)."""
    issue_id = issue_with_readers(sqlite_store, 500)
    sqlite_store.import_subscribers(
        [NewSubscriber(f"gone{i}@dead.example", None) for i in range(20)], now=NOW
    )
    lock = threading.Lock()
    state = {"rcpt": 0, "data": 0}
    deferred_once: set[str] = set()
    dropped: list[str] = []

    def rcpt(address: str) -> str | None:
        with lock:
            state["rcpt"] += 1
            n = state["rcpt"]
            if address.endswith("@dead.example"):
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            if 200 <= n < 215:
                return "421 4.7.0 Too many connections, try again later"
            if n % 7 == 0 and address not in deferred_once:
                deferred_once.add(address)
                return "451 4.3.0 Temporary lookup failure"
            if n % 60 == 0 and address not in deferred_once:
                deferred_once.add(address)
                return "drop"
        return None

    def data(rcpts: list[str]) -> str | None:
        with lock:
            state["data"] += 1
            if state["data"] % 50 == 0 and rcpts[0] not in deferred_once:
                deferred_once.add(rcpts[0])
                dropped.append(rcpts[0])
                return "drop"
        return None

    smtp_sink.rcpt_hook, smtp_sink.data_hook = rcpt, data
    report = run_send(
        sqlite_store,
        lambda: smtp(smtp_sink),
        issue_id,
        connections=4,
        max_attempts=3,
        processes=processes,
        **FAST_RETRIES,
    )
    lost = sqlite_store.issue_counts(issue_id)[0].deliveries["unknown"]
    assert lost == len(dropped) > 0 and lost == 500 - len(copies(smtp_sink))  # none resent on a guess
    assert report.finished and report.throttled >= 1
    again = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, resend_unknown=True, **FAST_RETRIES)
    assert again.requeued == lost and again.sent == lost
    got = copies(smtp_sink)
    assert set(got) == {f"user{i}@example.com" for i in range(500)}
    assert set(got.values()) == {1}
    counts = sqlite_store.issue_counts(issue_id)[0].deliveries
    assert counts["sent"] == 500 and counts["bounced"] == 20 and counts["failed"] == 0
    assert assert_tally_counts(sqlite_store, issue_id) == {"sent": 500, "bounced": 20}
    assert sqlite_store.subscriber_counts() == {"active": 500, "bounced": 20}
    row = next(r for r in sqlite_store.iter_subscribers(status="bounced"))
    assert row.email.endswith("@dead.example")


def test_deferred_rows_fail_after_max_attempts_with_the_reply_kept(
    sqlite_store: Store, smtp_sink: SmtpSink
) -> None:
    issue_id = issue_with_readers(sqlite_store, 3)
    smtp_sink.rcpt_hook = lambda a: "452 4.2.2 Mailbox full" if a == "user1@example.com" else None
    smtp_sink.data_hook = lambda r: (
        "554 5.7.1 Message rejected as spam" if r == ["user2@example.com"] else None
    )
    report = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, max_attempts=3, **FAST_RETRIES)
    assert report.counts == {"sent": 1, "deferred": 2, "failed": 2}  # every attempt's outcome
    with sqlite_store.read() as s:
        rows = {d.subscriber_id: d for d in s.query(Delivery)}
    by_email = {sqlite_store.get_subscriber_by_id(i).email: d for i, d in rows.items()}  # type: ignore[union-attr]
    assert by_email["user1@example.com"].attempts == 3 and "Mailbox full" in (
        by_email["user1@example.com"].last_reply or ""
    )
    assert by_email["user2@example.com"].attempts == 1 and "rejected as spam" in (
        by_email["user2@example.com"].last_reply or ""
    )


def test_unsubscribe_during_the_send_stops_later_messages(sqlite_store: Store, tmp_path: Path) -> None:
    issue_id = issue_with_readers(sqlite_store, 10)
    last = sqlite_store.get_subscriber("user9@example.com")
    assert last is not None
    handled: list[DeliveryStatus] = []

    def on_result(status: DeliveryStatus) -> None:
        handled.append(status)
        if len(handled) == 2:  # mid-send, as the web app would
            sqlite_store.unsubscribe(last.id, now=NOW)

    report = send_issue(
        sqlite_store,
        lambda: OutboxTransport(tmp_path / "outbox"),
        template(issue_id),
        Tokens(SECRET),
        issue_id=issue_id,
        mail_from="b@example.com",
        on_result=on_result,
    )
    assert report.sent == 9 and report.counts.get("skipped") == 1
    assert assert_tally_counts(sqlite_store, issue_id) == {"sent": 9, "skipped": 1}
    files = list((tmp_path / "outbox").rglob("*.eml"))
    assert len(files) == 9 and not any(b"user9@example.com" in f.read_bytes() for f in files)


def test_resend_unknown_only_on_request(sqlite_store: Store, smtp_sink: SmtpSink) -> None:
    issue_id = issue_with_readers(sqlite_store, 3)
    sqlite_store.start_send(issue_id)
    sqlite_store.register_sender(
        Enrolment(
            issue_id,
            "dead",
            host="elsewhere",
            pid=1,
            now=NOW,
            exclusive=True,
            stale_after=timedelta(seconds=30),
            is_alive=lambda h, p: False,
        )
    )
    (first, *_) = claim(sqlite_store, issue_id, "dead", now=NOW, limit=1, lease=timedelta(minutes=5))
    ledger = sqlite_store.ledger(issue_id, "dead")
    ledger.commit(Group(NOW, marks=[first.subscriber_id]))  # the sender died here, mid-DATA
    ledger.close()
    with sqlite_store.write() as s:  # and its heartbeat went stale long ago
        s.execute(update(Sender).values(heartbeat_at=datetime(2020, 1, 1, tzinfo=UTC)))
    report = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id)
    assert report.unknown_found == 1 and report.sent == 2
    assert "user0@example.com" not in copies(smtp_sink)
    again = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, resend_unknown=True)
    assert again.requeued == 1 and again.sent == 1
    assert copies(smtp_sink) == {f"user{i}@example.com": 1 for i in range(3)}
    assert assert_tally_counts(sqlite_store, issue_id) == {"sent": 3}  # unknown, requeued, then sent


@pytest.mark.parametrize("processes", [1, 2])
def test_no_smtp_server_stops_the_send_and_loses_nothing(sqlite_store: Store, processes: int) -> None:
    issue_id = issue_with_readers(sqlite_store, 5)
    port = free_port()  # nothing listens there
    with pytest.raises(TransportError, match="cannot connect"):
        run_send(
            sqlite_store,
            lambda: SmtpTransport("127.0.0.1", port, security="none", timeout=1),
            issue_id,
            connections=2,
            processes=processes,
            reconnect_seconds=0.05,
        )
    counts = sqlite_store.issue_counts(issue_id)[0].deliveries
    assert counts["pending"] == 5 and counts["sending"] == 0 and counts["unknown"] == 0
    assert sqlite_store.live_senders(issue_id) == []


def test_a_second_sender_on_sqlite_is_refused(sqlite_store: Store, smtp_sink: SmtpSink) -> None:
    issue_id = issue_with_readers(sqlite_store, 2)
    sqlite_store.register_sender(
        Enrolment(
            issue_id,
            "other",
            host="h",
            pid=1,
            now=datetime.now(UTC),
            exclusive=True,
            stale_after=timedelta(seconds=30),
            is_alive=lambda h, p: True,
        )
    )
    with pytest.raises(SendBusyError, match="being sent by another process"):
        run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id)
    assert smtp_sink.messages == []


def test_a_connection_that_cannot_open_waits_longer_each_time_up_to_30_seconds() -> None:
    assert [reconnect_wait(2.0, n) for n in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [reconnect_wait(0.05, n) for n in (1, 2)] == [0.05, 0.1]


def test_rate_limiter_spaces_messages_and_backs_off_on_throttling() -> None:
    t = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        t[0] += s

    limiter = RateLimiter(10, clock=lambda: t[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert sum(slept) == pytest.approx(0.4)  # 10 per second: 0.1 s apart
    limiter.throttle()
    assert limiter.rate == 5
    t[0] += 6
    limiter.acquire()
    assert limiter.rate == pytest.approx(6.25)  # recovering by a quarter
    quick = RateLimiter(10, clock=lambda: t[0], sleep=sleep, recover_after=1.0)  # a send's option
    quick.throttle()
    t[0] += 0.5
    quick.acquire()
    assert quick.rate == 5  # not yet
    t[0] += 1.0
    quick.acquire()
    assert quick.rate == pytest.approx(6.25)
    unlimited = RateLimiter(0, clock=lambda: t[0], sleep=sleep)
    assert unlimited.rate is None
    for _ in range(200):  # 100 msg/s measured over the last two seconds
        t[0] += 0.01
        unlimited.acquire()
    unlimited.throttle()
    assert unlimited.rate == pytest.approx(50)  # a throttled unlimited sender gets a limit: half
    for _ in range(20):  # throttled again and again: never below a tenth of what it did before
        t[0] += 1.5
        unlimited.throttle()
    assert unlimited.floor == pytest.approx(10) and unlimited.rate == pytest.approx(10)
    for _ in range(10):  # then quiet: it recovers
        t[0] += 6
        unlimited.acquire()
    assert unlimited.rate > 50


def test_reply_classification() -> None:
    assert classify_reply(250, "ok", stage="DATA").status == DeliveryStatus.SENT
    assert classify_reply(451, "try later", stage="RCPT").status == DeliveryStatus.DEFERRED
    assert classify_reply(421, "Too many connections", stage="RCPT").throttled
    assert classify_reply(421, "4.3.2 Service shutting down", stage="RCPT").throttled  # 421 alone says so
    assert classify_reply(450, "rate limit exceeded", stage="RCPT").throttled
    assert classify_reply(451, "4.7.0 Temporary rate limit, slow down", stage="RCPT").throttled
    assert classify_reply(452, "4.5.3 Too many recipients", stage="RCPT").throttled
    assert classify_reply(450, "4.7.1 Throttling in effect", stage="RCPT").throttled
    # one recipient's trouble, whatever it says of "later": that recipient waits, the send goes on
    assert not classify_reply(452, "mailbox full", stage="RCPT").throttled
    assert not classify_reply(451, "4.7.1 Greylisted, please try again later", stage="RCPT").throttled
    assert not classify_reply(451, "4.3.0 Temporary lookup failure, try again later", stage="RCPT").throttled
    assert not classify_reply(450, "4.2.1 Mailbox busy, generated later", stage="RCPT").throttled
    # what the recipient chose is not the server's word, wherever a reply echoes it
    echoes = {
        "rate@example.org": "4.1.2 <rate@example.org>: Recipient address rejected: Domain not found",
        "x@rate.attacker.example": "Name service error for name=rate.attacker.example type=MX",
        "throttle@example.net": "throttle: temporary lookup failure",
        "a@example.org": "4.1.1 <a@example.org>: unverified address: host mx.example.org[192.0.2.1] "
        "said: 450 4.7.0 rate limit exceeded (in reply to RCPT TO command)",
        "b@too-many.example": "4.4.3 Host or domain name not found: too-many.example [too many]",
    }
    for recipient, text in echoes.items():
        assert not classify_reply(450, text, stage="RCPT", recipient=recipient).throttled, text
    assert classify_reply(
        450, "4.7.1 <b@example.org>: rate limited", stage="RCPT", recipient="b@example.org"
    ).throttled
    assert classify_reply(550, "no such user", stage="RCPT").status == DeliveryStatus.BOUNCED
    assert classify_reply(554, "content rejected", stage="DATA").status == DeliveryStatus.FAILED


@pytest.mark.parametrize("processes", [1, 2])
def test_an_unexpected_error_in_a_connection_stops_the_send_instead_of_hanging(
    sqlite_store: Store, processes: int
) -> None:
    issue_id = issue_with_readers(sqlite_store, 5)

    class Broken:
        def send(self, envelope: object, message: bytes) -> object:
            raise RuntimeError("a bug in a transport")

        def close(self) -> None:
            pass

    with pytest.raises(TransportError, match="the mail transport failed: RuntimeError: a bug in a transport"):
        run_send(sqlite_store, lambda: Broken(), issue_id, connections=2, processes=processes)
    assert sqlite_store.live_senders(issue_id) == []
    counts = sqlite_store.issue_counts(issue_id)[0].deliveries
    assert counts["sent"] == 0 and counts["pending"] + counts["sending"] == 5


@pytest.mark.parametrize("processes", [1, 2])
def test_a_message_that_cannot_be_composed_stops_the_send_and_says_so(
    sqlite_store: Store, smtp_sink: SmtpSink, processes: int
) -> None:
    """Composing fails for one reader (a bug): the send stops with a sentence naming composing and
    the reader; that row never went on the wire, and the next send sends every row once."""
    issue_id = issue_with_readers(sqlite_store, 6)
    broken_for = sqlite_store.get_subscriber("user3@example.com")
    assert broken_for is not None

    class Unwritable(MessageTemplate):
        def compose(self, recipient: Recipient) -> bytes:
            if recipient.subscriber_id == broken_for.id:
                raise ValueError("a bug in composing")
            return super().compose(recipient)

    def send(make: MessageTemplate) -> SendReport:
        return send_issue(
            sqlite_store,
            lambda: smtp(smtp_sink),
            make,
            Tokens(SECRET),
            issue_id=issue_id,
            mail_from="bounces@example.com",
            options=SendOptions(connections=2, processes=processes),
        )

    bad = Unwritable(ISSUE, **TEMPLATE_ARGS, issue_id=issue_id)
    expected = f"composing the message to subscriber {broken_for.id} failed: ValueError: a bug in composing"
    with pytest.raises(NewsletterError, match=expected):
        send(bad)
    assert sqlite_store.live_senders(issue_id) == []
    counts = sqlite_store.issue_counts(issue_id)[0].deliveries
    assert counts["sending"] == 0 and counts["unknown"] == 0, counts
    assert "user3@example.com" not in copies(smtp_sink)
    assert send(template(issue_id)).finished
    assert copies(smtp_sink) == {f"user{i}@example.com": 1 for i in range(6)}


@pytest.mark.parametrize("processes", [1, 2])
def test_a_database_failure_mid_send_names_the_database_and_repeats_nothing(
    sqlite_store: Store, smtp_sink: SmtpSink, processes: int
) -> None:
    """The database refuses a group commit (a trigger, as a full disk would): the send stops with a
    sentence naming the database. What was on the wire in that group stays `sending`, which the
    next send reports as unknown; nobody gets two copies, and everyone else gets one."""
    issue_id = issue_with_readers(sqlite_store, 40)
    refused = sqlite_store.get_subscriber("user20@example.com")
    assert refused is not None
    trigger = (
        "CREATE TRIGGER refuse_a_record BEFORE UPDATE OF status ON deliveries "
        f"WHEN NEW.status = 'sent' AND NEW.subscriber_id = {refused.id} "
        "BEGIN SELECT RAISE(ABORT, 'the disk is on fire'); END"
    )
    with sqlite_store.write() as s:
        s.execute(sql(trigger))
    failed = "the database failed while recording the send: the disk is on fire"
    with pytest.raises(NewsletterError, match=failed):
        run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, connections=2, processes=processes)
    assert sqlite_store.live_senders(issue_id) == []
    with sqlite_store.write() as s:
        s.execute(sql("DROP TRIGGER refuse_a_record"))
    in_doubt = sqlite_store.issue_counts(issue_id)[0].deliveries["sending"]
    assert in_doubt >= 1  # at least the refused reader's message, sent and never recorded
    report = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, connections=2, processes=processes)
    assert report.finished and report.unknown_found == in_doubt
    got = copies(smtp_sink)
    assert set(got.values()) == {1} and "user20@example.com" in got
    everyone = {f"user{i}@example.com" for i in range(40)}
    assert set(got) == everyone and len(_unknown_addresses(sqlite_store, issue_id)) == in_doubt


@pytest.mark.parametrize("lost_reply", ["unknown", "retry"])
@pytest.mark.parametrize("processes", [1, 2])
def test_a_reply_lost_after_the_final_dot(
    sqlite_store: Store, smtp_sink: SmtpSink, lost_reply: str, processes: int
) -> None:
    """The server takes every 40th message and drops the connection before its 250. "unknown"
    (the default) sends nobody twice and says so; "retry" loses nobody and sends those twice."""
    issue_id = issue_with_readers(sqlite_store, 400)
    lock, dropped = threading.Lock(), set()

    def data(rcpts: list[str]) -> str | None:  # every 40th reader's first copy
        with lock:
            if int(rcpts[0].removeprefix("user").partition("@")[0]) % 40 == 39 and rcpts[0] not in dropped:
                dropped.add(rcpts[0])
                return "keep-drop"
        return None

    smtp_sink.data_hook = data
    report = run_send(
        sqlite_store,
        lambda: smtp(smtp_sink),
        issue_id,
        connections=4,
        lost_reply=lost_reply,
        processes=processes,
        **FAST_RETRIES,
    )
    got = copies(smtp_sink)
    assert len(got) == 400  # everybody has it
    counts = {k: v for k, v in sqlite_store.issue_counts(issue_id)[0].deliveries.items() if v}
    if lost_reply == "unknown":
        assert set(got.values()) == {1} and counts == {"sent": 390, "unknown": 10}
        with sqlite_store.read() as s:
            replies = {d.last_reply for d in s.query(Delivery).filter_by(status="unknown")}
        assert replies == {
            "the server closed the connection after the message's final dot: it may be delivered"
        }
        assert report.counts.get("unknown") == 10
        again = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, resend_unknown=True)
        assert again.requeued == 10 and sorted(copies(smtp_sink).values()).count(2) == 10  # on request
    else:
        assert sorted(got.values()).count(2) == 10 and counts == {"sent": 400}


def test_no_reply_in_time_is_said_as_such(sqlite_store: Store) -> None:
    """A server that takes the message and never answers: the reply says it timed out, and the
    message's fate is unknown (it may be delivered)."""
    import asyncio

    from aiosmtpd.controller import Controller

    class Silent:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            await asyncio.sleep(5)
            return "250 too late"

    port = free_port()
    controller = Controller(Silent(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        issue_id = issue_with_readers(sqlite_store, 1)
        t = SmtpTransport("127.0.0.1", port, security="none", timeout=1)
        result = t.send(Envelope("b@example.com", "user0@example.com", "k"), b"Subject: x\r\n\r\nhi\r\n")
        t.close()
    finally:
        controller.stop()
    assert result.status == DeliveryStatus.UNKNOWN
    assert result.reply == "no reply within 1 seconds after the message's final dot: it may be delivered"
    assert issue_id


def test_the_audience_is_fixed_when_the_send_first_starts(store: Store, tmp_path: Path) -> None:
    """A reader who joins after the issue went out gets nothing from a re-run, a resend of unknown
    rows or a resume: the issue's deliveries are made once."""
    issue_id = issue_with_readers(store, 3)
    outbox = tmp_path / "outbox"

    def send(**options: Any) -> SendReport:
        return run_send(store, lambda: OutboxTransport(outbox), issue_id, **options)

    first = send()
    assert first.added == 3 and first.sent == 3
    store.add_subscriber("late@example.com", None, now=NOW)
    with store.write() as s:  # as after a crash in flight: one unknown row to resend
        s.execute(update(Delivery).where(Delivery.subscriber_id == 1).values(status="unknown"))
    again = send(resend_unknown=True)
    assert (again.added, again.requeued, again.sent) == (0, 1, 1)
    assert send().added == 0 and store.start_send(issue_id) == 0
    files = {p.name for p in outbox.rglob("*.eml")}
    late = store.get_subscriber("late@example.com")
    assert late is not None and f"{late.id:08d}.eml" not in files
    assert assert_tally_counts(store, issue_id) == {"sent": 3}


def test_greylisting_one_recipient_in_seven_does_not_slow_the_send(
    sqlite_store: Store, smtp_sink: SmtpSink
) -> None:
    """451 "greylisted, try again later" on every 7th RCPT defers those recipients only: 500
    messages finish within their backoff waits plus seconds, the pool never slowed down."""
    import time

    issue_id = issue_with_readers(sqlite_store, 500)
    lock, seen = threading.Lock(), [0]

    def rcpt(address: str) -> str | None:
        with lock:
            seen[0] += 1
            return "451 4.7.1 Greylisted, please try again later" if seen[0] % 7 == 0 else None

    smtp_sink.rcpt_hook = rcpt
    options = {"retry_base_seconds": 0.5, "max_attempts": 5}
    started = time.monotonic()
    report = run_send(sqlite_store, lambda: smtp(smtp_sink), issue_id, connections=4, **options)
    seconds = time.monotonic() - started
    backoff = sum(0.5 * 2**k * 1.2 for k in range(4))  # the longest a row can wait: four retries
    assert report.finished and report.throttled == 0 and len(copies(smtp_sink)) == 500
    assert seconds < backoff + 10, seconds


def delivery_rows(store: Store, issue_id: int) -> dict[str, tuple[str, int, str]]:
    """Each reader's delivery: status, attempts and the last reply."""
    from newsletter.db.models import Subscriber

    with store.read() as s:
        rows = s.execute(
            select(Subscriber.email, Delivery.status, Delivery.attempts, Delivery.last_reply)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.issue_id == issue_id)
        ).all()
    return {email: (str(status), attempts, reply or "") for email, status, attempts, reply in rows}


# Strangers' addresses that say "rate", "throttle" or "too many", and the relay's usual 4xx that
# echoes them (Postfix's answer for a domain that does not resolve, in three shapes).
ECHOED = {
    "rate@example.org": "450 4.1.2 <rate@example.org>: Recipient address rejected: Domain not found",
    "x@rate.attacker.example": "450 Domain rate.attacker.example not found",
    "throttle@too-many.example": "451 4.3.0 throttle@too-many.example: Temporary lookup failure",
}


@pytest.mark.parametrize("processes", [1, 2])
def test_a_strangers_address_echoed_in_a_4xx_defers_that_reader_and_never_slows_the_send(
    sqlite_store: Store, smtp_sink: SmtpSink, processes: int
) -> None:
    """One reader's 4xx is no throttle signal, whatever address it echoes: the pool keeps its pace,
    the others all go out, and each stranger is deferred with an attempt used, like any 4xx."""
    sqlite_store.import_subscribers([NewSubscriber(a, "Mallory") for a in ECHOED], now=NOW)  # first in line
    issue_id = issue_with_readers(sqlite_store, 300)
    smtp_sink.rcpt_hook = lambda address: ECHOED.get(address)
    report = run_send(
        sqlite_store,
        lambda: smtp(smtp_sink),
        issue_id,
        connections=2,
        processes=processes,
        wait_for_retries=False,
    )
    rows = delivery_rows(sqlite_store, issue_id)
    assert report.throttled == 0 and report.sent == 300
    for address, reply in ECHOED.items():
        assert rows[address] == ("deferred", 1, reply)
    assert set(copies(smtp_sink).values()) == {1} and len(copies(smtp_sink)) == 300


def test_a_reader_throttled_again_and_again_uses_up_its_attempts_and_the_send_ends(
    sqlite_store: Store, smtp_sink: SmtpSink
) -> None:
    """A relay that answers one reader's RCPT with a throttle every time: its first throttles slow
    the pool and spare its attempts, the later ones are its own 4xx, so it fails after
    max_attempts and the send finishes instead of waiting for it."""
    issue_id = issue_with_readers(sqlite_store, 200)
    smtp_sink.rcpt_hook = lambda a: "450 4.7.1 Throttling in effect" if a == "user7@example.com" else None
    options = SendOptions()
    report = run_send(
        sqlite_store, lambda: smtp(smtp_sink), issue_id, connections=2, max_wait_seconds=8, **FAST_RETRIES
    )
    assert report.finished and report.throttled == options.throttles_per_row
    assert delivery_rows(sqlite_store, issue_id)["user7@example.com"][:2] == ("failed", options.max_attempts)
    assert report.sent == 199 and len(copies(smtp_sink)) == 199


def test_a_live_sender_declared_dead_stops_and_nobody_gets_two(store: Store, smtp_sink: SmtpSink) -> None:
    """Sender A looks dead (its heartbeat stale, its host unknown) while it is still sending; B
    takes its rows. A's next transaction finds itself fenced off: it stops and records nothing;
    what it had in flight is unknown; every reader gets at most one copy."""
    from newsletter.errors import SenderFenced

    issue_id = issue_with_readers(store, 300)
    renderings = with_renderings(store, issue_id, 300)  # three renderings: each reader's is fixed
    # A's two connections (the sink's first two) are held at the 40th message: A is mid-send
    smtp_sink.gate = Gate(after=40, applies=lambda connection, _rcpts: connection <= 2)
    outcome: dict[str, object] = {}

    def sender_a() -> None:
        try:
            outcome["report"] = run_send(
                store,
                lambda: smtp(smtp_sink),
                issue_id,
                connections=2,
                heartbeat_seconds=3600,
                variants=renderings,
            )
        except SenderFenced as exc:
            outcome["fenced"] = exc

    a = threading.Thread(target=sender_a)
    a.start()
    assert smtp_sink.gate.reached.wait(timeout=30)
    with store.write() as s:  # from here A looks dead: another host's, silent since 2020
        s.execute(update(Sender).values(host="elsewhere", heartbeat_at=datetime(2020, 1, 1, tzinfo=UTC)))
    b = run_send(
        store, lambda: smtp(smtp_sink), issue_id, connections=2, stale_after_seconds=1, variants=renderings
    )
    smtp_sink.gate.opened.set()  # A's messages on the wire are taken; its next transaction is fenced
    a.join(timeout=60)
    assert not a.is_alive() and "fenced" in outcome, outcome
    assert b.unknown_found <= 2  # what A had on the wire when B took over
    got = copies(smtp_sink)
    assert set(got.values()) == {1}, sorted(got.items(), key=lambda kv: -kv[1])[:3]
    counts = {k: v for k, v in store.issue_counts(issue_id)[0].deliveries.items() if v}
    assert counts.get("sent", 0) + counts.get("unknown", 0) == 300 and set(counts) <= {"sent", "unknown"}
    everyone = {f"user{i}@example.com" for i in range(300)}
    assert set(got) | _unknown_addresses(store, issue_id) == everyone  # nobody lost without a word
    for address, (mail,) in smtp_sink.by_recipient().items():  # each with the rendering of their sections
        i = int(address.removeprefix("user").split("@")[0])
        assert email.message_from_bytes(mail.data)["Subject"].endswith(rendering_of(i)), address


def _unknown_addresses(store: Store, issue_id: int) -> set[str]:
    with store.read() as s:
        ids = [d.subscriber_id for d in s.query(Delivery).filter_by(issue_id=issue_id, status="unknown")]
    return {store.get_subscriber_by_id(i).email for i in ids}  # type: ignore[union-attr]


def test_a_sender_process_killed_mid_send_loses_and_repeats_nothing(
    store: Store, smtp_sink: SmtpSink
) -> None:
    """SIGKILL of one worker process: what it had on the wire is unknown (never resent on a
    guess), what it held goes to the other, and the send finishes; nobody gets two."""
    import multiprocessing
    import os
    import signal

    issue_id = issue_with_readers(store, 600)
    smtp_sink.gate = Gate(after=100)  # every connection held at the 100th message: both mid-send
    result: dict[str, object] = {}

    def send() -> None:
        result["report"] = run_send(store, lambda: smtp(smtp_sink), issue_id, connections=4, processes=2)

    sender = threading.Thread(target=send)
    sender.start()
    assert smtp_sink.gate.reached.wait(timeout=30)
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("newsletter-sender-")]
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
    smtp_sink.gate.opened.set()
    sender.join(timeout=60)
    assert not sender.is_alive()
    report = result["report"]
    assert isinstance(report, SendReport) and report.finished
    got = copies(smtp_sink)
    assert set(got.values()) == {1}
    counts = {k: v for k, v in store.issue_counts(issue_id)[0].deliveries.items() if v}
    assert set(counts) <= {"sent", "unknown"} and counts.get("unknown", 0) <= 2, counts
    everyone = {f"user{i}@example.com" for i in range(600)}
    assert set(got) | _unknown_addresses(store, issue_id) == everyone
    assert assert_tally_counts(store, issue_id) == counts

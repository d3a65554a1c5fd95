"""Run on a SQLite file and on the local PostgreSQL alike."""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from newsletter.db.models import DeliveryStatus, SubscriberStatus
from newsletter.delivery.records import DeliveryTarget, Enrolment, Fate, Group, MarkResult
from newsletter.errors import SendBusyError
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from .support.helpers import ROOT

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def test_migrate_is_idempotent_and_matches_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from newsletter.db.models import Base

    head = max(p.name[:4] for p in (ROOT / "newsletter/db/migrations/versions").glob("0*.py"))
    assert store.migrate() == head
    assert store.migrate() == head
    assert store.ping()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff  # the migrations build exactly the tables the models describe


def test_subscribers_add_import_unsubscribe(store: Store) -> None:
    sub, created = store.add_subscriber("ada@example.com", "Ada", now=NOW)
    assert created and sub.status == SubscriberStatus.ACTIVE and sub.confirmed_at == NOW
    _, again = store.add_subscriber("ada@example.com", None, now=NOW)
    assert not again
    added, existing = store.import_subscribers(
        [NewSubscriber("ada@example.com", None), NewSubscriber("bob@example.com", "Bob")], now=NOW
    )
    assert (added, existing) == (1, 1)
    assert store.unsubscribe(sub.id, now=NOW) is True
    assert store.unsubscribe(sub.id, now=NOW) is False
    assert store.subscriber_counts() == {"active": 1, "unsubscribed": 1}
    emails = [s.email for s in store.iter_subscribers(batch=1)]
    assert emails == ["ada@example.com", "bob@example.com"]
    assert store.get_subscriber("ada@example.com").unsubscribed_at == NOW  # type: ignore[union-attr]


def _counted(store: Store) -> dict[str, int]:
    """Subscribers by status the slow way, to hold the trigger-kept tally against."""
    from sqlalchemy import func, select

    from newsletter.db.models import Subscriber

    with store.read() as s:
        return dict(s.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())


def test_the_subscriber_tally_follows_every_change_of_status(store: Store) -> None:
    from sqlalchemy import delete, text, update

    from newsletter.db.models import Subscriber

    store.import_subscribers([NewSubscriber(f"r{i}@example.com", None) for i in range(50)], now=NOW)
    store.import_subscribers([NewSubscriber(f"r{i}@example.com", None) for i in range(40, 60)], now=NOW)
    assert store.subscriber_counts() == {"active": 60} == _counted(store)
    never = timedelta(0)
    pending, _ = store.request_subscription(
        "p@example.com", None, ip=None, now=NOW, resend_after=never, closed_resend_after=never
    )
    gone = store.get_subscriber("r1@example.com")
    assert gone is not None and store.unsubscribe(gone.id, now=NOW)
    store.request_subscription(
        "r1@example.com", None, ip=None, now=NOW, resend_after=never, closed_resend_after=never
    )
    store.confirm_subscriber(pending.id, now=NOW)
    store.erase_subscriber(store.get_subscriber("r2@example.com").id, now=NOW)  # type: ignore[union-attr]
    with store.write() as s:  # the statuses the send loop and the bounce reader set, as bulk updates
        s.execute(update(Subscriber).where(Subscriber.email.like("r3%")).values(status="bounced"))
        s.execute(update(Subscriber).where(Subscriber.email == "r4@example.com").values(status="complained"))
        s.execute(update(Subscriber).where(Subscriber.email == "r5@example.com").values(name="same status"))
        s.execute(delete(Subscriber).where(Subscriber.email == "r6@example.com"))
    expected = {"active": 46, "pending": 1, "unsubscribed": 1, "bounced": 11, "complained": 1}
    assert store.subscriber_counts() == expected == _counted(store)
    if not store.is_sqlite:  # TRUNCATE fires no row trigger; its own trigger empties the tally
        with store.write() as s:
            s.execute(text("TRUNCATE subscribers RESTART IDENTITY CASCADE"))
        assert store.subscriber_counts() == {} == _counted(store)


def test_growth_counts_each_day_in_the_newsletters_time_zone(store: Store) -> None:
    from zoneinfo import ZoneInfo

    late = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)  # already the 25th in Berlin
    store.add_subscriber("late@example.com", None, now=late)
    store.add_subscriber("noon@example.com", None, now=datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    gone = store.get_subscriber("noon@example.com")
    assert gone is not None and store.unsubscribe(gone.id, now=datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    days = [date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)]
    zero = {"new": 0, "confirmed": 0, "unsubscribed": 0, "bounced": 0}
    berlin = store.subscriber_growth(days=days, tz=ZoneInfo("Europe/Berlin"))
    assert berlin == {
        days[0]: zero,
        days[1]: zero | {"new": 2, "confirmed": 2},
        days[2]: zero | {"unsubscribed": 1},
    }
    assert store.subscriber_growth(days=days, tz=UTC)[days[0]] == zero | {"new": 1, "confirmed": 1}


def _issue(store: Store, day: date = date(2026, 11, 25)) -> int:
    issue = store.create_issue(
        day, story_ids=[], content=lambda i: ("S", "P", "<p>h</p>", "t"), placeholder_key=None, now=NOW
    )
    assert issue is not None
    return issue.id


def test_one_issue_per_date(store: Store) -> None:
    _issue(store)
    assert (
        store.create_issue(
            date(2026, 11, 25),
            story_ids=[],
            content=lambda i: ("", "", "", ""),
            placeholder_key=None,
            now=NOW,
        )
        is None
    )


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


def test_delivery_rows_are_made_once_and_claims_are_leases(store: Store) -> None:
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(5)], now=NOW)
    pending, _ = store.add_subscriber("p@example.com", None, now=NOW, status=SubscriberStatus.PENDING)
    issue_id = _issue(store)
    assert store.start_send(issue_id) == 5
    assert store.start_send(issue_id) == 0  # never a second row
    enrol(store, issue_id, "a")
    enrol(store, issue_id, "b")
    first = claim(store, issue_id, "a", now=NOW, limit=3, lease=LEASE)
    second = claim(store, issue_id, "b", now=NOW, limit=10, lease=LEASE)
    assert len(first) == 3 and len(second) == 2
    assert not {t.subscriber_id for t in first} & {t.subscriber_id for t in second}
    assert pending.id not in {t.subscriber_id for t in first + second}
    assert store.issue_counts(issue_id)[0].deliveries["pending"] == 5  # a claim is not "in flight"
    # a lease that ran out can be taken over
    enrol(store, issue_id, "c")
    later = claim(store, issue_id, "c", now=NOW + LEASE + timedelta(seconds=1), limit=10, lease=LEASE)
    assert len(later) == 5


def test_the_mark_checks_claim_and_subscriber_in_one_transaction(store: Store) -> None:
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(3)], now=NOW)
    issue_id = _issue(store)
    store.start_send(issue_id)
    enrol(store, issue_id, "a")
    enrol(store, issue_id, "b")
    one, two, three = claim(store, issue_id, "a", now=NOW, limit=10, lease=LEASE)
    store.unsubscribe(two.subscriber_id, now=NOW)
    assert mark(store, issue_id, "a", one.subscriber_id, two.subscriber_id) == [
        MarkResult.IN_FLIGHT,
        MarkResult.SKIPPED,
    ]
    assert mark(store, issue_id, "b", three.subscriber_id) == [MarkResult.LOST]  # not its claim
    ledger = store.ledger(issue_id, "a")
    try:
        result = ledger.commit(
            Group(  # one group: a fate, a mark refused, a mark granted
                NOW,
                fates=[Fate(one.subscriber_id, DeliveryStatus.SENT, "250 ok", 1, None)],
                marks=[one.subscriber_id, three.subscriber_id],  # one: already in flight (and now sent)
            )
        )
        assert result.marks == {one.subscriber_id: MarkResult.LOST, three.subscriber_id: MarkResult.IN_FLIGHT}
        ledger.commit(
            Group(NOW, fates=[Fate(three.subscriber_id, DeliveryStatus.BOUNCED, "550 no such user", 1, None)])
        )
    finally:
        ledger.close()
    counts = store.issue_counts(issue_id)[0].deliveries
    assert (counts["sent"], counts["skipped"], counts["bounced"], counts["sending"]) == (1, 1, 1, 0)
    gone = store.get_subscriber_by_id(three.subscriber_id)
    assert gone is not None and gone.status == "bounced" and gone.bounce_count == 1
    assert store.finish_issue_if_done(issue_id, now=NOW)
    issue = store.get_issue(issue_id)
    assert issue is not None and issue.status == "sent"


def test_a_dead_senders_rows_in_flight_become_unknown(store: Store) -> None:
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(4)], now=NOW)
    issue_id = _issue(store)
    store.start_send(issue_id)
    enrol(store, issue_id, "crashed")
    targets = claim(store, issue_id, "crashed", now=NOW, limit=10, lease=LEASE)
    assert mark(store, issue_id, "crashed", targets[0].subscriber_id) == [MarkResult.IN_FLIGHT]
    with pytest.raises(SendBusyError, match="being sent by another process"):
        enrol(store, issue_id, "second", exclusive=True)  # the first still looks alive
    assert enrol(store, issue_id, "second", exclusive=True, is_alive=dead) == 1
    counts = store.issue_counts(issue_id)[0].deliveries
    assert counts["unknown"] == 1 and counts["pending"] == 3
    assert len(claim(store, issue_id, "second", now=NOW, limit=10, lease=LEASE)) == 3  # its claims were freed
    assert [s.id for s in store.live_senders(issue_id)] == ["second"]
    assert store.requeue_unknown(issue_id) == 1
    store.deregister_sender("second")
    enrol(store, issue_id, "third")
    assert len(claim(store, issue_id, "third", now=NOW, limit=10, lease=LEASE)) == 4


@pytest.mark.postgres
def test_senders_on_hosts_whose_clocks_disagree_judge_heartbeats_by_the_database(
    postgres_store: Store,
) -> None:
    """A sender on a host whose clock runs an hour ahead must not find a live sender stale: on
    PostgreSQL heartbeats are written and compared by the database's clock."""
    store = postgres_store
    issue_id = _issue(store)
    store.start_send(issue_id)

    def register(sender: str, now: datetime) -> int:
        return store.register_sender(
            Enrolment(
                issue_id,
                sender,
                host=f"host-{sender}",
                pid=1,
                now=now,
                exclusive=False,
                stale_after=timedelta(seconds=30),
                is_alive=lambda _h, _p: None,  # another host: only the heartbeat can tell
            )
        )

    register("a", datetime.now(UTC) - timedelta(hours=1))  # a's clock runs an hour behind
    register("b", datetime.now(UTC) + timedelta(hours=1))  # b's an hour ahead
    assert sorted(s.id for s in store.live_senders(issue_id)) == ["a", "b"]  # nobody reaped


def test_one_bounce_policy_at_send_time_and_later_and_complaints_stay(store: Store) -> None:
    """A 5xx during the send and a bounce read later follow one rule: only a live subscriber
    becomes bounced (the count always grows); an unsubscribe never overwrites complained."""
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(3)], now=NOW)
    issue_id = _issue(store)
    store.start_send(issue_id)
    enrol(store, issue_id, "a")
    left, angry, _ = claim(store, issue_id, "a", now=NOW, limit=10, lease=LEASE)
    assert mark(store, issue_id, "a", left.subscriber_id) == [MarkResult.IN_FLIGHT]
    store.unsubscribe(left.subscriber_id, now=NOW)  # while the message is on the wire
    ledger = store.ledger(issue_id, "a")
    try:
        ledger.commit(
            Group(
                NOW,
                fates=[Fate(left.subscriber_id, DeliveryStatus.BOUNCED, "550 5.1.1 no such user", 1, None)],
            )
        )
    finally:
        ledger.close()
    gone = store.get_subscriber_by_id(left.subscriber_id)
    assert gone is not None and (gone.status, gone.bounce_count) == ("unsubscribed", 1)
    with store.write() as s:
        from newsletter.db.models import Subscriber

        row = s.get(Subscriber, angry.subscriber_id)
        assert row is not None
        row.status = SubscriberStatus.COMPLAINED
    assert not store.unsubscribe(angry.subscriber_id, now=NOW)  # a one-click after the complaint
    still = store.get_subscriber_by_id(angry.subscriber_id)
    assert still is not None and still.status == "complained"

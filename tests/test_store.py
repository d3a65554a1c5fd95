"""Run on a SQLite file and on the local PostgreSQL alike."""

from datetime import UTC, date, datetime

from newsletter.models import DeliveryStatus, SubscriberStatus
from newsletter.store import NewSubscriber, Store

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def test_migrate_is_idempotent(store: Store) -> None:
    assert store.migrate() == "0001"
    assert store.migrate() == "0001"
    assert store.ping()


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


def _issue(store: Store, day: date = date(2026, 11, 25)) -> int:
    issue = store.create_issue(day, story_ids=[], render=lambda i: ("S", "P", "<p>h</p>", "t"), now=NOW)
    assert issue is not None
    return issue.id


def test_one_issue_per_date(store: Store) -> None:
    _issue(store)
    assert (
        store.create_issue(date(2026, 11, 25), story_ids=[], render=lambda i: ("", "", "", ""), now=NOW)
        is None
    )


def test_delivery_rows_are_made_once_and_claims_check_the_subscriber(store: Store) -> None:
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(5)], now=NOW)
    pending, _ = store.add_subscriber("p@example.com", None, now=NOW, status=SubscriberStatus.PENDING)
    issue_id = _issue(store)
    assert store.start_send(issue_id) == 5
    assert store.start_send(issue_id) == 0  # never a second row
    targets = store.due_targets(issue_id, now=NOW, after=0, limit=100)
    assert len(targets) == 5 and pending.id not in [t.subscriber_id for t in targets]
    first, second = targets[0], targets[1]
    assert store.claim(issue_id, first.subscriber_id, now=NOW)
    assert not store.claim(issue_id, first.subscriber_id, now=NOW)  # already in flight
    store.unsubscribe(second.subscriber_id, now=NOW)
    assert not store.claim(issue_id, second.subscriber_id, now=NOW)
    store.record(
        issue_id,
        first.subscriber_id,
        status=DeliveryStatus.SENT,
        reply="250 ok",
        attempts=1,
        next_attempt_at=None,
        now=NOW,
    )
    counts = store.issue_counts(issue_id)[0].deliveries
    assert counts["sent"] == 1 and counts["skipped"] == 1 and counts["pending"] == 3


def test_rows_left_in_flight_become_unknown_and_can_be_requeued(store: Store) -> None:
    store.import_subscribers([NewSubscriber("a@example.com", None)], now=NOW)
    issue_id = _issue(store)
    store.start_send(issue_id)
    (t,) = store.due_targets(issue_id, now=NOW, after=0, limit=10)
    store.claim(issue_id, t.subscriber_id, now=NOW)
    assert store.mark_in_flight_unknown(issue_id) == 1
    assert store.issue_counts(issue_id)[0].deliveries["unknown"] == 1
    assert store.finish_issue_if_done(issue_id, now=NOW)  # an unknown row does not hold the issue open
    assert store.requeue_unknown(issue_id) == 1
    assert store.due_targets(issue_id, now=NOW, after=0, limit=10)[0].subscriber_id == t.subscriber_id


def test_hard_bounce_marks_the_subscriber(store: Store) -> None:
    sub, _ = store.add_subscriber("gone@example.com", None, now=NOW)
    issue_id = _issue(store)
    store.start_send(issue_id)
    store.claim(issue_id, sub.id, now=NOW)
    store.record(
        issue_id,
        sub.id,
        status=DeliveryStatus.BOUNCED,
        reply="550 no such user",
        attempts=1,
        next_attempt_at=None,
        now=NOW,
    )
    after = store.get_subscriber_by_id(sub.id)
    assert after is not None and after.status == "bounced" and after.bounce_count == 1
    assert store.finish_issue_if_done(issue_id, now=NOW)
    issue = store.get_issue(issue_id)
    assert issue is not None and issue.status == "sent"

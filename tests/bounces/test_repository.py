"""The bounce rule the repositories keep, on a SQLite file and on the local PostgreSQL alike."""

from newsletter.db.models import DeliveryStatus, SubscriberStatus
from newsletter.delivery.records import Fate, Group, MarkResult
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.deliveries import LEASE, NOW, claim, enrol, make_issue, mark


def test_one_bounce_policy_at_send_time_and_later_and_complaints_stay(store: Store) -> None:
    """A 5xx during the send and a bounce read later follow one rule: only a live subscriber
    becomes bounced (the count always grows); an unsubscribe never overwrites complained."""
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(3)], now=NOW)
    issue_id = make_issue(store)
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

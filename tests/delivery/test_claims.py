"""Delivery rows, claims and senders on a SQLite file and on the local PostgreSQL alike."""

from datetime import UTC, datetime, timedelta

import pytest

from newsletter.db.models import DeliveryStatus, SubscriberStatus
from newsletter.delivery.records import Enrolment, Fate, Group, MarkResult
from newsletter.errors import SendBusyError
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.deliveries import LEASE, NOW, claim, dead, enrol, make_issue, mark


def test_delivery_rows_are_made_once_and_claims_are_leases(store: Store) -> None:
    store.import_subscribers([NewSubscriber(f"u{i}@example.com", None) for i in range(5)], now=NOW)
    pending, _ = store.add_subscriber("p@example.com", None, now=NOW, status=SubscriberStatus.PENDING)
    issue_id = make_issue(store)
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
    issue_id = make_issue(store)
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
    issue_id = make_issue(store)
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
    issue_id = make_issue(store)
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

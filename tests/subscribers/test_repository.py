"""The subscriber repository on a SQLite file and on the local PostgreSQL alike."""

from datetime import UTC, date, datetime, timedelta

from newsletter.db.models import SubscriberStatus
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.deliveries import NOW


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

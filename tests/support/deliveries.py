"""Setting up an issue, its senders and their claims straight through the store, for the tests of
the delivery ledger and of what a send does to subscribers."""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from newsletter.delivery.records import DeliveryTarget, Enrolment, Group, MarkResult
from newsletter.store import Store

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def make_issue(store: Store, day: date = date(2026, 11, 25)) -> int:
    issue = store.create_issue(
        day, story_ids=[], content=lambda i: ("S", "P", "<p>h</p>", "t"), placeholder_key=None, now=NOW
    )
    assert issue is not None
    return issue.id


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

"""Every text the newsletter stores goes through one cleaning rule (db.models.storable), and a feed
that cannot be stored is one broken feed: on a SQLite file and on the local PostgreSQL (whose
text holds no NUL), with mail over real SMTP and feeds over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, String, Text, select, text

from newsletter.bounces.policy import BouncePolicy
from newsletter.bounces.records import FoundEvent
from newsletter.config import load_settings
from newsletter.content.records import FetchedStory
from newsletter.db.models import (
    Base,
    BounceEvent,
    BounceMail,
    Delivery,
    DeliveryStatus,
    FeedState,
    ScheduledRun,
    SectionSet,
    StateColumn,
    StoredJSON,
    StoredText,
    Story,
    storable,
)
from newsletter.issues.build import gather, gather_and_build, today
from newsletter.store import Store

from ..support.deliveries import FAST_RETRIES, issue_with_readers, run_send, smtp
from ..support.helpers import FeedServer, Route, SmtpSink, assert_tally_counts, recent, rss, write_config

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_the_cleaning_rule() -> None:
    assert storable("a\x00b\x01c\x08d\x0be\x0cf\x1fg\ufffeh\uffffi") == "abcdefghi"
    assert storable("tab\tlf\ncr\r kept, and é, 中, 😀 and U+FFFD \ufffd") == (
        "tab\tlf\ncr\r kept, and é, 中, 😀 and U+FFFD \ufffd"
    )
    assert storable("lone \ud800 and \udfff") == "lone \ufffd and \ufffd"  # no UTF-8 can carry them
    assert storable("") == ""


def test_every_text_column_goes_through_the_rule() -> None:
    """No model can forget it: a text, string or JSON column is a Stored* type (or a state enum,
    whose values the code spells, or a reader's set of sections, each name stored through it)."""
    plain = [
        f"{table.name}.{column.name}"
        for table in Base.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String | Text | JSON)
        or (
            not isinstance(column.type, StoredText | StoredJSON | StateColumn | SectionSet)
            and isinstance(getattr(column.type, "impl", None), String | Text | JSON)
        )
    ]
    assert plain == []


def test_a_nul_in_an_smtp_reply_is_kept_cleaned_and_every_delivery_gets_its_state(
    store: Store, smtp_sink: SmtpSink
) -> None:
    """Once "the database failed" on PostgreSQL and every row in flight was left `unknown`."""
    issue_id = issue_with_readers(store, 6)
    refused = {
        "user1@example.com": "550 5.1.1 no such\x00 user",
        "user2@example.com": "452 4.2.2 mailbox\x00 full",
    }
    smtp_sink.rcpt_hook = lambda a: refused.get(a)
    smtp_sink.data_hook = lambda r: (
        "554 5.7.1 rejected\x00 as spam" if r == ["user3@example.com"] else "250 2.0.0 queued as \x00A1"
    )
    report = run_send(store, lambda: smtp(smtp_sink), issue_id, connections=2, max_attempts=2, **FAST_RETRIES)
    assert report.finished
    with store.read() as s:
        rows = {d.subscriber_id: d for d in s.scalars(select(Delivery).where(Delivery.issue_id == issue_id))}
    by_email = {store.get_subscriber_by_id(i).email: d for i, d in rows.items()}  # type: ignore[union-attr]
    states = {e: d.status for e, d in by_email.items()}
    assert states == {
        "user0@example.com": DeliveryStatus.SENT,
        "user1@example.com": DeliveryStatus.BOUNCED,
        "user2@example.com": DeliveryStatus.FAILED,  # deferred once, then out of attempts
        "user3@example.com": DeliveryStatus.FAILED,
        "user4@example.com": DeliveryStatus.SENT,
        "user5@example.com": DeliveryStatus.SENT,
    }
    replies = {e: d.last_reply or "" for e, d in by_email.items()}
    assert "no such user" in replies["user1@example.com"]
    assert "mailbox full" in replies["user2@example.com"] and by_email["user2@example.com"].attempts == 2
    assert "rejected as spam" in replies["user3@example.com"]
    assert "queued as A1" in replies["user0@example.com"]
    assert not any("\x00" in r for r in replies.values())
    assert assert_tally_counts(store, issue_id) == {"sent": 3, "bounced": 1, "failed": 2}
    assert store.get_subscriber("user1@example.com").status == "bounced"  # type: ignore[union-attr]


HOSTILE = "a\x00b\ud800c\x01"  # NUL, a lone surrogate (from an email header's stray byte), a control
CLEANED = "ab\ufffdc"


def test_every_repository_stores_a_hostile_text_cleaned(store: Store) -> None:
    """Stories, feed states, bounce mails and their events, scheduled runs: through the column types."""
    story = FetchedStory(
        identity=f"urn:{HOSTILE}",
        source=HOSTILE,
        title=HOSTILE,
        link=f"https://x.example/{HOSTILE}",
        summary=HOSTILE,
        bullets=(HOSTILE, HOSTILE),
        author=HOSTILE,
        image=f"https://img.example/{HOSTILE}",
        section=HOSTILE,
        published_at=NOW,
    )
    assert store.add_stories([story], now=NOW) == 1
    store.save_feed_state(
        f"https://f.example/{HOSTILE}", etag=HOSTILE, last_modified=HOSTILE, error=None, now=NOW
    )
    store.save_feed_state(
        f"https://f.example/{HOSTILE}", etag=None, last_modified=None, error=HOSTILE, now=NOW
    )
    sub, _ = store.add_subscriber("ann@example.com", None, now=NOW)
    event = FoundEvent("hard", "ann@example.com", sub.id, None, "5.1.1", HOSTILE)
    policy = BouncePolicy(3, timedelta(days=30))
    store.record_bounce_mail(
        digest="d" * 64, source=HOSTILE, kind="bounce", note=HOSTILE, events=[event], now=NOW, policy=policy
    )
    assert store.claim_scheduled_run(NOW, host=HOSTILE, pid=1, now=NOW)
    store.finish_scheduled_run(NOW, issue_id=None, outcome=HOSTILE, now=NOW)
    with store.read() as s:
        kept = s.scalars(select(Story)).one()
        state = s.scalars(select(FeedState)).one()
        mail = s.scalars(select(BounceMail)).one()
        found = s.scalars(select(BounceEvent)).one()
        run = s.scalars(select(ScheduledRun)).one()
    assert (kept.identity, kept.source, kept.title, kept.summary, kept.author, kept.section) == (
        f"urn:{CLEANED}",
        CLEANED,
        CLEANED,
        CLEANED,
        CLEANED,
        CLEANED,
    )
    assert kept.bullets == [CLEANED, CLEANED] and kept.link == f"https://x.example/{CLEANED}"
    assert (state.url, state.etag, state.last_error) == (f"https://f.example/{CLEANED}", CLEANED, CLEANED)
    assert (mail.source, mail.note, found.detail) == (CLEANED, CLEANED, CLEANED)
    assert (run.host, run.outcome) == (CLEANED, CLEANED)
    assert store.feed_state(f"https://f.example/{HOSTILE}") is not None  # found by the same rule


def _hostile_items() -> list[dict[str, Any]]:
    """NUL as a raw byte and as a character reference, in author, category, link, guid and image."""
    return [
        {
            "title": "Raw NUL",
            "link": "https://x.example/raw\x00nul",
            "guid": "urn:raw:\x001",
            "author": "Ann\x00 Lee",
            "category": "Secu\x00rity",
            "image": "https://img.example/raw\x00.jpg",
            "description": "Words\x01 and \x00more",
            "date": recent(),
        },
        {
            "title": "Referenced NUL&#0;",
            "link": "https://x.example/ref&#0;nul",
            "guid": "ref-&#0;2",
            "author": "Bo&#0;b",
            "category": "Secu&#0;rity",
            "date": recent(2),
        },
    ]


def test_a_feed_with_nul_in_author_category_link_and_guid_is_gathered_with_the_others(
    store: Store, feed_server: FeedServer, tmp_path: Path, env: None
) -> None:
    """Once the whole gather failed on PostgreSQL: the good feed was lost and no issue was built."""
    feed_server.routes["/good"] = Route(
        rss([{"title": "Good news", "link": "https://y.example/g", "date": recent()}])
    )
    feed_server.routes["/nul"] = Route(rss(_hostile_items()))
    config = write_config(
        tmp_path, sources=[("Good", feed_server.url("/good")), ("Nul", feed_server.url("/nul"))]
    )
    settings = load_settings(config)
    now = datetime.now(UTC)
    report, (outcome, *_) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert report is not None and [r.error for r in report.results] == [None, None]
    assert report.new_stories == 3
    with store.read() as s:
        stories = {st.title: st for st in s.scalars(select(Story))}
    raw, ref = stories["Raw NUL"], stories["Referenced NUL"]
    assert (raw.author, raw.section, raw.link, raw.identity) == (
        "Ann Lee",
        "Security",
        "https://x.example/rawnul",
        "urn:raw:1",
    )
    assert raw.image == "https://img.example/raw.jpg" and raw.summary == "Words and more"
    assert (ref.author, ref.section, ref.link) == ("Bob", "Security", "https://x.example/refnul")
    assert ref.identity == feed_server.url("/nul") + "#ref-2"
    assert outcome.created and outcome.issue is not None and outcome.issue.story_count == 3
    assert "Ann Lee" in outcome.issue.html or "Ann Lee" in outcome.issue.text


@contextmanager
def refusing_stories_of(store: Store, source: str) -> Iterator[None]:
    """A trigger in the database itself refuses one source's stories (a real failure of the store)."""
    if store.is_sqlite:
        create = [
            f"CREATE TRIGGER nl_refuse BEFORE INSERT ON stories WHEN NEW.source = '{source}' "
            "BEGIN SELECT RAISE(ABORT, 'no room for this feed'); END"
        ]
        drop = ["DROP TRIGGER nl_refuse"]
    else:
        create = [
            "CREATE FUNCTION nl_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.source = '{source}' THEN RAISE EXCEPTION 'no room for this feed'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER nl_refuse BEFORE INSERT ON stories FOR EACH ROW EXECUTE FUNCTION nl_refuse()",
        ]
        drop = ["DROP TRIGGER nl_refuse ON stories", "DROP FUNCTION nl_refuse()"]
    with store.engine.begin() as conn:
        for statement in create:
            conn.execute(text(statement))
    try:
        yield
    finally:
        with store.engine.begin() as conn:  # the PostgreSQL schema is shared by this worker's tests
            for statement in drop:
                conn.execute(text(statement))


def test_a_feed_that_cannot_be_stored_is_reported_and_the_others_are_kept(
    store: Store, feed_server: FeedServer, tmp_path: Path, env: None
) -> None:
    feed_server.routes["/good"] = Route(
        rss([{"title": "Good news", "link": "https://y.example/g", "date": recent()}])
    )
    feed_server.routes["/refused"] = Route(
        rss([{"title": "Refused news", "link": "https://z.example/r", "date": recent()}]),
        headers={"ETag": '"v1"'},
    )
    sources_ = [("Refused", feed_server.url("/refused")), ("Good", feed_server.url("/good"))]
    settings = load_settings(write_config(tmp_path, sources=sources_))
    now = datetime.now(UTC)
    with refusing_stories_of(store, "Refused"):
        report, (outcome, *_) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert report is not None and report.new_stories == 1
    refused, good = report.results
    assert good.ok and [r.source.name for r in report.failed] == ["Refused"]
    assert "could not be stored" in (refused.error or "") and "no room for this feed" in (refused.error or "")
    with store.read() as s:
        assert [st.title for st in s.scalars(select(Story))] == ["Good news"]
        state = s.get(FeedState, feed_server.url("/refused"))
    assert state is not None and state.last_error == refused.error
    assert state.etag is None  # not kept: the next gather fetches the feed whole and stores it
    assert outcome.created and outcome.issue is not None and outcome.issue.story_count == 1
    again = gather(settings, store, now=now)
    assert again.failed == [] and again.new_stories == 1

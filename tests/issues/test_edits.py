"""SPEC 9, the editor's hour: an editor's changes to a built issue (drop, restore, up, down, lead,
split, merge, subject and intro) render it again for every variant, are logged, are escaped like a
feed's text, and are refused once the send has begun; an edit and the start of a send never both
win."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.db.models import Delivery, Frequency, Issue, IssueStatus
from newsletter.issues.build import gather_and_build, today
from newsletter.issues.edits import Action, BadEdit, Change, Layout, arranged, edit_issue, hold_issue
from newsletter.issues.records import SendBegun
from newsletter.issues.variants import fix_audience
from newsletter.store import Store
from newsletter.subscribers.records import Preferences

from ..support.helpers import FeedServer, Route, recent, rss, write_config

WORLD = ["Harbour cranes stand idle as dock workers strike over pay", "Parliament passes a pension budget"]
SPORT = ["Cyclist wins the mountain stage after a late solo attack", "Tennis final postponed by rain"]
# one event told by two sources, word for word: one item of two stories (a cluster)
TWICE = "Storm floods the old town centre overnight as rivers burst their banks"


def _feed(titles: list[str], prefix: str) -> bytes:
    return rss(
        [
            {"title": t, "link": f"https://example.com/{prefix}{i}", "date": recent(i + 1), "description": t}
            for i, t in enumerate(titles)
        ]
    )


@pytest.fixture
def issue_setup(
    tmp_path: Path, feed_server: FeedServer, env: None, store: Store
) -> tuple[Settings, Store, Issue]:
    feed_server.routes["/world"] = Route(_feed([*WORLD, TWICE], "w"))
    feed_server.routes["/sport"] = Route(_feed(SPORT, "s"))
    feed_server.routes["/wire"] = Route(_feed([TWICE], "x"))
    path = write_config(
        tmp_path,
        sources=[
            ("World Desk", feed_server.url("/world"), "World"),
            ("Sport Desk", feed_server.url("/sport"), "Sport"),
            ("Wire", feed_server.url("/wire"), "World"),
        ],
        extra="[digest]\nmin_stories = 1\n",
    )
    settings = load_settings(path)
    now = datetime.now(UTC)
    for address, sections in (("all@example.com", ()), ("sport@example.com", ("Sport",))):
        store.add_subscriber(address, None, now=now, preferences=Preferences(sections, Frequency.DAILY))
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    return settings, store, outcome.issue


def _faces(store: Store, issue: Issue) -> list[str]:
    return [item[0].title for item in store.issue_items(issue)]


def _id_of(store: Store, issue: Issue, title: str) -> int:
    return next(item[0].id for item in store.issue_items(issue) if item[0].title == title)


# -- the layout, pure --------------------------------------------------------------------------------

SECTIONS = {1: "World", 2: "World", 3: "Sport", 4: "Sport", 5: "World", 6: "World"}


def test_up_and_down_move_within_a_section_and_the_ends_move_the_section() -> None:
    layout = Layout(((1,), (2,), (5, 6), (3,), (4,)))  # lead 1; World 2, 5+6; Sport 3, 4
    assert arranged(layout, Action.UP, 5, SECTIONS).items == ((1,), (5, 6), (2,), (3,), (4,))
    assert arranged(layout, Action.DOWN, 2, SECTIONS).items == ((1,), (5, 6), (2,), (3,), (4,))
    assert arranged(layout, Action.UP, 3, SECTIONS).items == ((1,), (3,), (4,), (2,), (5, 6))  # Sport first
    assert arranged(layout, Action.DOWN, 5, SECTIONS).items == ((1,), (3,), (4,), (2,), (5, 6))
    assert arranged(layout, Action.DOWN, 1, SECTIONS).items[0] == (2,)  # the next story leads
    for action, story in ((Action.UP, 1), (Action.UP, 2), (Action.DOWN, 4), (Action.LEAD, 1)):
        with pytest.raises(BadEdit):
            arranged(layout, action, story, SECTIONS)


def test_lead_drop_restore_split_and_merge() -> None:
    layout = Layout(((1,), (2,), (5, 6), (3,), (4,)))
    led = arranged(layout, Action.LEAD, 3, SECTIONS)
    assert led.items == ((3,), (1,), (2,), (5, 6), (4,))  # the old lead heads its own section
    dropped = arranged(layout, Action.DROP, 2, SECTIONS)
    assert dropped.items == ((1,), (5, 6), (3,), (4,)) and dropped.dropped == ((2,),)
    assert arranged(dropped, Action.RESTORE, 2, SECTIONS) == Layout(((1,), (5, 6), (2,), (3,), (4,)))
    split = arranged(layout, Action.SPLIT, 5, SECTIONS)
    assert split.items == ((1,), (2,), (5,), (6,), (3,), (4,))
    assert arranged(split, Action.MERGE, 5, SECTIONS, other=6).items == layout.items
    for action, story, other in ((Action.SPLIT, 2, None), (Action.MERGE, 2, 2), (Action.RESTORE, 2, None)):
        with pytest.raises(BadEdit):
            arranged(layout, action, story, SECTIONS, other=other)
    with pytest.raises(BadEdit, match="last story"):
        arranged(Layout(((1,),)), Action.DROP, 1, SECTIONS)
    with pytest.raises(BadEdit, match="not in the issue"):
        arranged(layout, Action.DROP, 99, SECTIONS)


# -- on the stored issue ------------------------------------------------------------------------------


def test_each_edit_renders_every_variant_again_and_is_logged(
    issue_setup: tuple[Settings, Store, Issue],
) -> None:
    settings, store, issue = issue_setup
    assert [v.sections for v in store.issue_variants(issue.id)] == [("Sport",)]
    dropped = _id_of(store, issue, SPORT[0])
    now = datetime.now(UTC)
    edited = edit_issue(settings, store, issue.id, Change(Action.DROP, dropped), who="ed", now=now)
    assert SPORT[0] not in _faces(store, edited) and edited.dropped == [[dropped]]
    assert SPORT[0] not in edited.html and SPORT[0] not in edited.text
    assert edited.story_count == issue.story_count - 1 and edited.version == issue.version + 1
    (sport,) = store.issue_variants(issue.id)  # rendered again, for the same readers, without it
    assert sport.sections == ("Sport",) and SPORT[0] not in sport.text and SPORT[1] in sport.text
    restored = edit_issue(settings, store, issue.id, Change(Action.RESTORE, dropped), who="ann", now=now)
    assert SPORT[0] in restored.text and restored.dropped == []
    lead = _id_of(store, issue, SPORT[1])
    led = edit_issue(settings, store, issue.id, Change(Action.LEAD, lead), who="ed", now=now)
    assert _faces(store, led)[0] == SPORT[1] and SPORT[1] in led.subject  # the subject follows the lead
    log = store.issue_edits(issue.id)
    assert [(e.who, e.action) for e in log] == [("ed", "lead"), ("ann", "restore"), ("ed", "drop")]
    assert log[2].detail == f"story {dropped}" and log[0].at == now


def test_split_and_merge_a_cluster(issue_setup: tuple[Settings, Store, Issue]) -> None:
    settings, store, issue = issue_setup
    (twice,) = [item for item in store.issue_items(issue) if item[0].title == TWICE]
    assert len(twice) == 2  # the wire's copy is "also covered by"
    now = datetime.now(UTC)
    split = edit_issue(settings, store, issue.id, Change(Action.SPLIT, twice[0].id), who="ed", now=now)
    assert _faces(store, split).count(TWICE) == 2 and split.story_count == issue.story_count + 1
    merged = edit_issue(
        settings, store, issue.id, Change(Action.MERGE, twice[0].id, other=twice[1].id), who="ed", now=now
    )
    assert [[s.id for s in i] for i in store.issue_items(merged) if i[0].title == TWICE] == [
        [twice[0].id, twice[1].id]
    ]


def test_subject_and_intro_are_the_editors_text_escaped_and_one_line(
    issue_setup: tuple[Settings, Store, Issue],
) -> None:
    settings, store, issue = issue_setup
    intro = 'Two lines from the desk: <script>alert("x")</script> & more.\r\nSecond line.'
    change = Change(Action.EDIT, subject="Storm day\r\nBcc: victim@example.com", intro=intro)
    edited = edit_issue(settings, store, issue.id, change, who="ed", now=datetime.now(UTC))
    assert edited.subject == "Storm day Bcc: victim@example.com"  # no CR or LF reaches the header
    assert edited.chosen_subject == edited.subject
    assert '&lt;script&gt;alert("x")&lt;/script&gt; &amp; more. Second line.</td>' in edited.html
    assert "<script>" not in edited.html
    assert '\n\nTwo lines from the desk: <script>alert("x")</script> & more. Second\nline.\n' in edited.text
    (sport,) = store.issue_variants(issue.id)
    assert sport.subject == edited.subject and "&lt;script&gt;" in sport.html
    # the intro stands above the stories
    assert edited.text.index("Two lines from the desk") < edited.text.index("== TOP STORY ==")
    back = edit_issue(
        settings, store, issue.id, Change(Action.EDIT, subject="", intro=""), who="ed", now=datetime.now(UTC)
    )
    assert back.chosen_subject is None and back.subject == issue.subject and back.intro == ""
    for bad in ("a\x00b", "a\ud800b", "bell\x07"):
        with pytest.raises(BadEdit, match="not text"):
            edit_issue(
                settings,
                store,
                issue.id,
                Change(Action.EDIT, subject=bad, intro=""),
                who="ed",
                now=datetime.now(UTC),
            )
    with pytest.raises(BadEdit, match="2000 at most"):
        edit_issue(
            settings,
            store,
            issue.id,
            Change(Action.EDIT, subject="", intro="x" * 2001),
            who="ed",
            now=datetime.now(UTC),
        )


def test_no_edit_once_the_send_has_begun(issue_setup: tuple[Settings, Store, Issue]) -> None:
    settings, store, issue = issue_setup
    assert fix_audience(settings, store, issue) == 2
    before = store.get_issue(issue.id)
    assert before is not None and before.status is IssueStatus.SENDING
    story = _id_of(store, issue, SPORT[0])
    for change in (Change(Action.DROP, story), Change(Action.EDIT, subject="x", intro="y")):
        with pytest.raises(SendBegun):
            edit_issue(settings, store, issue.id, change, who="ed", now=datetime.now(UTC))
    for action in (Action.HOLD, Action.APPROVE):
        with pytest.raises(SendBegun):
            hold_issue(store, issue.id, action, who="ed", now=datetime.now(UTC))
    after = store.get_issue(issue.id)
    assert after is not None and (after.html, after.version, after.held) == (
        before.html,
        before.version,
        False,
    )
    assert store.issue_edits(issue.id) == []


def test_an_edit_and_the_start_of_a_send_never_both_win(issue_setup: tuple[Settings, Store, Issue]) -> None:
    """Many times over: an edit and a send start at once, from two threads at a barrier. Either the
    edit is stored and the send fixes its audience on the edited renderings, or the send began
    first and the edit is refused with nothing changed."""
    settings, store, first = issue_setup
    wins = {"edit": 0, "send": 0}
    for n in range(12):
        if n:  # a fresh issue of the same stories: the last one is sending
            first = _rebuilt(settings, store, first)
        outcome = _race(settings, store, first, _id_of(store, first, SPORT[0]))
        assert outcome["rows"] == 2  # the send always begins, once
        issue = store.get_issue(first.id)
        assert issue is not None and issue.status is IssueStatus.SENDING
        variants = {v.id: v for v in store.issue_variants(first.id)}
        with store.read() as s:
            named = [d.variant_id for d in s.query(Delivery).filter(Delivery.issue_id == first.id)]
        assert [v for v in named if v is not None] and all(v in variants for v in named if v is not None)
        sport = next(variants[v] for v in named if v is not None)
        if outcome["edit"] == "stored":
            wins["edit"] += 1  # the send reads the edit's renderings: the dropped story goes to nobody
            assert SPORT[0] not in issue.text and SPORT[0] not in sport.text
            assert [e.action for e in store.issue_edits(first.id)] == ["drop"]
        else:
            wins["send"] += 1  # the edit came second: nothing of it is stored
            assert SPORT[0] in issue.text and SPORT[0] in sport.text
            assert store.issue_edits(first.id) == [] and issue.version == 0
    assert wins["edit"] + wins["send"] == 12


def _race(settings: Settings, store: Store, issue: Issue, story: int) -> dict[str, object]:
    """An edit (dropping `story`) and the start of the send, released at once by a barrier."""
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def edit() -> None:
        barrier.wait()
        try:
            edit_issue(settings, store, issue.id, Change(Action.DROP, story), who="ed", now=datetime.now(UTC))
            outcome["edit"] = "stored"
        except SendBegun:
            outcome["edit"] = "refused"

    def start() -> None:
        barrier.wait()
        outcome["rows"] = fix_audience(settings, store, issue)

    threads = [threading.Thread(target=edit), threading.Thread(target=start)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def _rebuilt(settings: Settings, store: Store, old: Issue) -> Issue:
    """The same stories again in a new built issue (the last one's date moved aside)."""
    from datetime import timedelta

    from sqlalchemy import update

    from newsletter.db.models import Story

    with store.write() as s:
        moved = old.issue_date - timedelta(days=old.id)
        s.execute(update(Issue).where(Issue.id == old.id).values(issue_date=moved))
        s.execute(update(Story).values(issue_id=None))
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None and outcome.created
    return outcome.issue

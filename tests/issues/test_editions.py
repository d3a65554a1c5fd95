"""SPEC 8, the sending side: a reader gets only their sections, rendered once per set of sections;
a reader with nothing in an issue gets no mail and is counted; the weekly edition on its day, sent
only to weekly readers; one issue per (date, edition); a preference change during a send changes
nothing decided."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import WEEKDAYS, Settings
from newsletter.db.models import Edition, Frequency
from newsletter.delivery.sending import send, send_options
from newsletter.issues.build import build, gather, gather_and_build, today
from newsletter.store import Store
from newsletter.subscribers.records import Preferences

from ..support.editions import (
    ALERTS,
    SPORT,
    TECH,
    WORLD,
    add,
    sectioned_config,
    sectioned_store,
    titles,
    weekly_today,
)
from ..support.helpers import FeedServer, Gate, SmtpSink, run_cli

# three sections a reader may choose, and a source without one (in every reader's issue)


@pytest.fixture
def sectioned(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None, store: Store
) -> tuple[Settings, Store]:
    """Sections and readers on a SQLite file and on the local PostgreSQL (the CLI's tests, below,
    use the config's SQLite file)."""
    return sectioned_config(tmp_path, feed_server, smtp_sink), store


def test_each_reader_gets_only_their_sections_rendered_once_per_set(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    everyone = add(store, "all@example.com")
    sport = add(store, "sport@example.com", "Sport")
    sport_too = add(store, "sport2@example.com", "Sport", "Culture")  # Culture has nothing: same as Sport
    tech_world = add(store, "tw@example.com", "World", "Tech")
    _, (outcome,) = gather_and_build(
        settings, store, issue_date=today(settings, datetime.now(UTC)), now=datetime.now(UTC)
    )
    issue = outcome.issue
    assert issue is not None and issue.story_count == 6
    # one rendering per set of sections the audience holds: the issue's own, Sport, Tech+World
    variants = store.issue_variants(issue.id)
    assert sorted(v.sections for v in variants) == [("Sport",), ("Tech", "World")]
    assert "3 renderings" in outcome.reason

    report = send(settings, store, issue)
    assert report.variants == 3 and report.counts == {"sent": 4}
    got = {r: titles(m[0].data) for r, m in smtp_sink.by_recipient().items()}
    sport_titles = {t for t, _ in SPORT}
    world_titles, tech_titles, alerts = {t for t, _ in WORLD}, {t for t, _ in TECH}, {t for t, _ in ALERTS}
    assert set(got[everyone.email][2]) == sport_titles | world_titles | tech_titles | alerts
    assert got[everyone.email][1] == WORLD[0][0]
    for reader in (sport, sport_too):
        subject, lead, told = got[reader.email]
        assert set(told) == sport_titles | alerts  # their section, and the source without one
        assert lead in sport_titles  # the lead is the best of theirs, not the issue's (World's)
        assert lead in subject
    assert set(got[tech_world.email][2]) == world_titles | tech_titles | alerts
    # the reader's section order is the issue's
    assert got[sport.email][2] == [t for t in got[everyone.email][2] if t in sport_titles | alerts]


def test_a_reader_with_nothing_in_the_issue_gets_no_mail_and_is_counted(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    settings, store = sectioned_store(tmp_path, feed_server, smtp_sink)
    # without the sectionless source, a Culture reader has nothing today
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().split('\n[[sources]]\nname = "Alerts"')[0])
    add(store, "culture@example.com", "Culture")
    add(store, "all@example.com")
    built = json.loads(run_cli(config, "build", "--json").stdout)
    assert built["issue"]["edition"] == "daily" and built["variants"] == 1
    assert [i["edition"] for i in built["issues"]] == ["daily"]
    sent = json.loads(run_cli(config, "send", "--json").stdout)
    assert sent["counts"] == {"sent": 1, "skipped": 1} and sent["variants"] == 1
    assert list(smtp_sink.by_recipient()) == ["all@example.com"]
    status = json.loads(run_cli(config, "status", "--json").stdout)
    (shown,) = status["issues"]
    assert shown["deliveries"]["skipped"] == 1 and shown["deliveries"]["sent"] == 1
    assert shown["edition"] == "daily"
    # sending again sends nobody anything: the skipped reader's row is final
    again = json.loads(run_cli(config, "send", "--json").stdout)
    assert again["this_run"] == {} and len(smtp_sink.messages) == 1


def test_renderings_are_made_per_set_never_per_reader(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    sets = [(), ("Sport",), ("World",), ("World", "Sport")]
    for i in range(120):
        add(store, f"r{i}@example.com", *sets[i % len(sets)])
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    assert len(store.issue_variants(outcome.issue.id)) == 3  # and the issue's own: 4 renderings
    report = send(settings, store, outcome.issue)
    assert report.variants == 4 and report.counts == {"sent": 120}
    assert len({m.data.split(b"\r\n\r\n", 1)[0].count(b"Subject") for m in smtp_sink.messages}) == 1


def test_a_set_chosen_after_the_build_is_rendered_when_the_send_begins(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    add(store, "all@example.com")
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None and store.issue_variants(outcome.issue.id) == []
    late = add(store, "late@example.com", "Tech")  # joined between the build and the send
    report = send(settings, store, outcome.issue)
    assert report.counts == {"sent": 2} and report.variants == 2
    _, _, told = titles(smtp_sink.by_recipient()[late.email][0].data)
    assert set(told) == {t for t, _ in TECH + ALERTS}


def test_a_preference_change_during_the_send_changes_nothing_decided(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    readers = [add(store, f"r{i:03}@example.com", *(("Sport",) if i % 2 else ())) for i in range(60)]
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    issue = outcome.issue
    assert issue is not None
    smtp_sink.gate = Gate(after=20)
    done: list[Any] = []
    sending = threading.Thread(target=lambda: done.append(send(settings, store, issue)))
    sending.start()
    assert smtp_sink.gate.reached.wait(30)
    # mid-send: every reader changes their mind; a weekly reader now, and the other sections
    for i, sub in enumerate(readers):
        chosen = ("World",) if i % 2 else ("Sport",)
        store.set_preferences(sub.id, Preferences(chosen, Frequency.DAILY), name=None)
    smtp_sink.gate.opened.set()
    sending.join(60)
    assert done and done[0].counts == {"sent": 60}
    got = smtp_sink.by_recipient()
    assert sorted(got) == sorted(r.email for r in readers)  # each once: none missing, none twice
    sport = {t for t, _ in SPORT + ALERTS}
    for i, sub in enumerate(readers):
        (mail,) = got[sub.email]
        told = set(titles(mail.data)[2])
        assert (told == sport) if i % 2 else (len(told) == 6), sub.email  # what the freeze decided


def test_the_weekly_edition_on_its_day_goes_to_weekly_readers_only(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    settings, store = weekly_today(tmp_path, feed_server, smtp_sink)
    daily = add(store, "daily@example.com")
    weekly = add(store, "weekly@example.com", frequency=Frequency.WEEKLY)
    weekly_sport = add(store, "ws@example.com", "Sport", frequency=Frequency.WEEKLY)
    config = tmp_path / "config.toml"
    built = json.loads(run_cli(config, "build", "--json").stdout)
    assert [i["edition"] for i in built["issues"]] == ["daily", "weekly"]
    assert built["issue"]["edition"] == "daily"  # the daily issue's keys at the top, as before
    day_issue, week_issue = (store.get_issue(i["issue"]["id"]) for i in built["issues"])
    assert day_issue is not None and week_issue is not None
    assert day_issue.issue_date == week_issue.issue_date and week_issue.edition is Edition.WEEKLY
    assert week_issue.story_count == 4 and built["issues"][1]["variants"] == 2
    week_items = built["issues"][1]["items"]
    # the week's widest event leads, told once with its other two desks; stories the daily told too
    assert len(week_items[0]["also"]) == 2 and "flood" in week_items[0]["title"].lower()
    daily_titles = {i["title"] for i in built["issues"][0]["items"]}
    assert daily_titles & {i["title"] for i in week_items}
    assert not any("flood" in t.lower() for t in daily_titles)  # five days old: not today's news

    # `build` again builds nothing; `run` sends each edition to its readers only
    again = json.loads(run_cli(config, "build", "--json").stdout)
    assert [i["created"] for i in again["issues"]] == [False, False]
    run_cli(config, "run")
    got = smtp_sink.by_recipient()
    assert sorted(got) == sorted([daily.email, weekly.email, weekly_sport.email])
    assert all(len(m) == 1 for m in got.values())
    assert "flood" not in titles(got[daily.email][0].data)[0].lower()
    subject, lead, _ = titles(got[weekly.email][0].data)
    assert subject.startswith("Week to ") and "lood" in lead
    _, _, told = titles(got[weekly_sport.email][0].data)
    assert set(told) <= {t for t, _ in SPORT + ALERTS} and told
    status = json.loads(run_cli(config, "status", "--json").stdout)
    assert sorted(i["edition"] for i in status["issues"]) == ["daily", "weekly"]
    assert {i["edition"]: i["deliveries"]["sent"] for i in status["issues"]} == {"daily": 1, "weekly": 2}


def test_on_other_days_there_is_no_weekly_issue_and_weekly_readers_get_nothing(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    now = datetime.now(UTC)
    other = WEEKDAYS[(now.date().weekday() + 3) % 7]
    settings = sectioned_config(tmp_path, feed_server, smtp_sink, weekly_day=other)
    store = Store(settings.database_url)
    store.migrate()
    add(store, "daily@example.com")
    add(store, "weekly@example.com", frequency=Frequency.WEEKLY)
    gather(settings, store, now=now)
    outcomes = gather_and_build(settings, store, issue_date=today(settings, now), now=now)[1]
    assert [o.edition for o in outcomes] == [Edition.DAILY]
    assert outcomes[0].issue is not None
    report = send(settings, store, outcomes[0].issue)
    assert report.counts == {"sent": 1} and list(smtp_sink.by_recipient()) == ["daily@example.com"]
    # a weekly issue of a date is its own: building it does not disturb the daily one of the date
    weekly = build(settings, store, issue_date=today(settings, now), now=now, edition=Edition.WEEKLY)
    assert weekly.issue is not None and weekly.created and weekly.issue.id != outcomes[0].issue.id
    found = store.issue_for_date(today(settings, now))
    assert found is not None and found.id == outcomes[0].issue.id


def test_without_a_weekly_edition_every_reader_gets_the_daily(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    add(store, "daily@example.com")
    add(store, "was-weekly@example.com", frequency=Frequency.WEEKLY)  # chosen before weekly was turned off
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    assert send(settings, store, outcome.issue).counts == {"sent": 2}
    assert sorted(smtp_sink.by_recipient()) == ["daily@example.com", "was-weekly@example.com"]


def test_an_existing_database_upgrades_its_issues_to_daily_ones(store: Store) -> None:
    """Migration 0015 on a database with an issue sent before: it becomes its date's daily issue,
    its deliveries keep the issue's own rendering, and the date may now have a weekly issue."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from ..support.helpers import ROOT

    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "newsletter/db/migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0014")
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO issues (issue_date, subject, preheader, html, text, story_count, status, "
                "created_at, paused) VALUES (:d, 'Old', '', '<p>old</p>', 'old', 0, 'sent', :t, false)"
            ),
            {"d": now.date(), "t": now},
        )
        conn.execute(
            text(
                "INSERT INTO subscribers (email, name, status, source, bounce_count, created_at) "
                "VALUES ('old@example.com', NULL, 'active', 'cli', 0, :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (issue_id, subscriber_id, status, attempts) "
                "SELECT i.id, s.id, 'sent', 1 FROM issues i, subscribers s"
            )
        )
    store.migrate()
    old = store.issue_for_date(now.date())
    assert old is not None and old.edition is Edition.DAILY and old.subject == "Old"
    with store.read() as s:
        assert s.execute(text("SELECT variant_id FROM deliveries")).scalars().all() == [None]
    weekly = store.create_issue(
        now.date(),
        edition=Edition.WEEKLY,
        story_ids=[],
        content=lambda _i: ("Week", "", "<p>w</p>", "w"),
        placeholder_key=None,
        now=now,
    )
    assert weekly is not None and weekly.id != old.id
    again = store.create_issue(
        now.date(), story_ids=[], content=lambda _i: ("x", "", "x", "x"), placeholder_key=None, now=now
    )
    assert again is None  # still one daily issue a date
    assert [i.edition for i in store.issues_of_date(now.date())] == [Edition.DAILY, Edition.WEEKLY]


def test_sections_edited_by_hand_into_nonsense_get_the_whole_issue(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    from sqlalchemy import text

    settings, store = sectioned
    odd = add(store, "odd@example.com", "Sport")
    gone = add(store, "gone@example.com", "Sport")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE subscribers SET sections = 'not json' WHERE id = :i"), {"i": odd.id})
        conn.execute(text("""UPDATE subscribers SET sections = '["Opera"]' WHERE id = :i"""), {"i": gone.id})
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    assert send(settings, store, outcome.issue).counts == {"sent": 2}
    for reader in (odd, gone):  # nonsense, or a section no longer offered: every section
        (mail,) = smtp_sink.by_recipient()[reader.email]
        assert len(titles(mail.data)[2]) == 6


def _right_rendering(got: dict[str, list[Any]], readers: dict[str, tuple[str, ...]]) -> None:
    """Each reader's mail holds their sections' stories and the sectionless source's, no other."""
    kinds = {"Sport": SPORT, "World": WORLD, "Tech": TECH}
    for address, chosen in readers.items():
        (mail,) = got[address]
        wanted = {t for name in (chosen or kinds) for t, _ in kinds[name]} | {t for t, _ in ALERTS}
        assert set(titles(mail.data)[2]) == wanted, address


def test_a_pause_mid_send_then_resume_gives_each_reader_their_rendering_once(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    sets: list[tuple[str, ...]] = [(), ("Sport",), ("World", "Tech")]
    readers = {f"p{i:03}@example.com": sets[i % 3] for i in range(90)}
    for address, chosen in readers.items():
        add(store, address, *chosen)
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    issue = outcome.issue
    assert issue is not None
    smtp_sink.gate = Gate(after=30)
    done: list[Any] = []
    slowed = dataclasses.replace(send_options(settings), rate_per_second=60)  # slow enough to see the pause
    sending = threading.Thread(target=lambda: done.append(send(settings, store, issue, options=slowed)))
    sending.start()
    assert smtp_sink.gate.reached.wait(30)
    assert store.set_paused(issue.id, True)  # the operator pauses mid-send
    smtp_sink.gate.opened.set()
    sending.join(60)
    assert done and done[0].paused and len(smtp_sink.messages) < 90
    store.set_paused(issue.id, False)
    resumed = send(settings, store, issue)
    assert resumed.finished and resumed.variants == 3
    _right_rendering(smtp_sink.by_recipient(), readers)  # each once, none missing, the right one


def test_a_lost_reply_with_renderings_is_unknown_and_resent_with_the_right_one(
    sectioned: tuple[Settings, Store], smtp_sink: SmtpSink
) -> None:
    settings, store = sectioned
    readers = {"all@example.com": (), "lost@example.com": ("Sport",), "tw@example.com": ("World", "Tech")}
    for address, chosen in readers.items():
        add(store, address, *chosen)
    smtp_sink.data_hook = lambda rcpts: "keep-drop" if rcpts == ["lost@example.com"] else None
    now = datetime.now(UTC)
    _, (outcome,) = gather_and_build(settings, store, issue_date=today(settings, now), now=now)
    assert outcome.issue is not None
    first = send(settings, store, outcome.issue)
    assert first.counts == {"sent": 2, "unknown": 1}  # delivered, its 250 lost: not sent again unasked
    assert send(settings, store, outcome.issue).counts == {}
    smtp_sink.data_hook = None
    smtp_sink.messages = [m for m in smtp_sink.messages if m.rcpt_tos != ["lost@example.com"]]
    again = send(settings, store, outcome.issue, resend_unknown=True)
    assert again.counts == {"sent": 1}
    _right_rendering(smtp_sink.by_recipient(), readers)

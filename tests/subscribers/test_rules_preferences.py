"""SPEC 8, the reader's side: the configuration's choices, the one rule every face calls, the
preference token, the stored choices and their migration, and the tally the triggers keep. The
store tests run on a SQLite file and on the local PostgreSQL alike."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from newsletter.config import Settings, load_settings
from newsletter.db.models import Frequency, PreferenceTally, Subscriber, SubscriberStatus
from newsletter.delivery.tokens import BadToken, Tokens
from newsletter.errors import ConfigError
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber, Preferences
from newsletter.subscribers.rules import (
    Choices,
    InvalidPreferences,
    check_preferences,
    choice_counts,
    chosen_sections,
    effective_sections,
    parse_sections,
    sets_taking,
)

from ..support.helpers import PG_URL, ROOT, SECRET, write_config

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
SECTIONS = ("Tech News", "Science, Health", "Reviews")
CHOICES = Choices(SECTIONS, weekly=True)
DAILY_ONLY = Choices(SECTIONS, weekly=False)
HOSTILE = [
    "",
    " ",
    "\x00",
    "Tech News\x00",
    "Reviews\r\nBcc: x@example.com",
    "\ud800",
    "\u202eReviews",
    "x" * 5000,
]


def sectioned_config(tmp_path: Path, extra: str = "", sections: tuple[str | None, ...] = ()) -> Path:
    """A config whose sources carry `sections` (None: a source without one)."""
    path = write_config(tmp_path, extra=extra)
    feed = ROOT / "samples/feeds/tech-news.xml"
    for i, section in enumerate(sections):
        line = f'section = "{section}"\n' if section is not None else ""
        path.write_text(path.read_text() + f'\n[[sources]]\nname = "Feed {i}"\nurl = "{feed}"\n{line}')
    return path


# -- the configuration ----------------------------------------------------------------------------


def test_sections_are_the_distinct_source_sections_in_the_files_order(tmp_path: Path, env: None) -> None:
    settings = load_settings(
        sectioned_config(
            tmp_path, sections=("Reviews", None, "Tech News", "Reviews", "  ", "Science, Health")
        )
    )
    assert settings.sections == ("Reviews", "Tech News", "Science, Health")  # the sourceless one reaches all
    assert settings.digest.weekly_day == "" and not settings.digest.weekly
    assert settings.digest.weekly_max_stories == 15
    assert Choices.of(settings) == Choices(("Reviews", "Tech News", "Science, Health"), weekly=False)


@pytest.mark.parametrize("day", ["monday", "Friday", "SUNDAY"])
def test_a_weekday_name_makes_a_weekly_edition(tmp_path: Path, env: None, day: str) -> None:
    settings = load_settings(
        sectioned_config(tmp_path, f'[digest]\nweekly_day = "{day}"\nweekly_max_stories = 7\n')
    )
    assert settings.digest.weekly and settings.digest.weekly_max_stories == 7
    assert Choices.of(settings).frequencies == (Frequency.DAILY, Frequency.WEEKLY)


@pytest.mark.parametrize(
    ("line", "named", "reason"),
    [
        ('weekly_day = "funday"', "digest.weekly_day", "'funday'"),
        ('weekly_day = "mon"', "digest.weekly_day", "weekday name"),
        ('weekly_day = " "', "digest.weekly_day", "weekday name"),
        ('weekly_day = "monday\\u0000"', "digest.weekly_day", "weekday name"),
        ("weekly_day = 1", "digest.weekly_day", "must be a string"),
        ("weekly_day = true", "digest.weekly_day", "must be a string"),
        ('weekly_max_stories = "15"', "digest.weekly_max_stories", "whole number"),
        ("weekly_max_stories = 15.5", "digest.weekly_max_stories", "whole number"),
        ("weekly_max_stories = 0", "digest.weekly_max_stories", "positive"),
        ("weekly_max_stories = -3", "digest.weekly_max_stories", "positive"),
    ],
)
def test_a_bad_weekly_setting_is_refused_by_name(
    tmp_path: Path, env: None, line: str, named: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)) as refused:
        load_settings(sectioned_config(tmp_path, f"[digest]\n{line}\n"))
    assert reason in str(refused.value)


def test_the_shipped_config_documents_the_weekly_keys() -> None:
    text = (ROOT / "config.toml").read_text()
    for key in ("weekly_day", "weekly_max_stories"):
        (line,) = [x for x in text.splitlines() if x.startswith(key)]
        assert "#" in line, line  # every key has its comment
    settings = load_settings(ROOT / "config.toml")
    assert settings.digest.weekly_day == "" and settings.sections == (
        "Tech News",
        "In-Depth Tech Stories",
        "Expert Reviews",
    )


# -- the one rule ---------------------------------------------------------------------------------


def test_no_choice_is_every_section_daily() -> None:
    assert check_preferences(None, None, CHOICES) == Preferences((), Frequency.DAILY)
    assert check_preferences(None, "", CHOICES) == Preferences()
    assert check_preferences(None, None, Choices()) == Preferences()


def test_a_choice_is_kept_in_the_configs_order_and_every_section_is_stored_as_all() -> None:
    chosen = check_preferences(["Reviews", "Tech News", "Reviews"], "weekly", CHOICES)
    assert chosen == Preferences(("Tech News", "Reviews"), Frequency.WEEKLY)
    assert check_preferences([" reviews ", "TECH NEWS"], " Weekly ", CHOICES).sections == (
        "Tech News",
        "Reviews",
    )
    assert check_preferences(list(SECTIONS), "daily", CHOICES) == Preferences()  # all: new ones too
    assert check_preferences(["Science, Health"], None, CHOICES).sections == ("Science, Health",)
    # no sections in the config: nothing to choose, an empty list is every story
    assert check_preferences([], None, Choices()) == Preferences()


@pytest.mark.parametrize("value", HOSTILE + ["Sports", "Tech", "Tech News, Reviews"])
def test_an_unknown_section_is_refused_naming_it_safely(value: str) -> None:
    with pytest.raises(InvalidPreferences, match="no section") as refused:
        check_preferences(["Tech News", value], "daily", CHOICES)
    message = str(refused.value)
    assert message.isprintable() and len(message) < 300  # no control character, line break or surrogate
    assert all(s in message for s in SECTIONS)  # and says what there is
    if value.strip() and value.isprintable():
        assert value[:60] in message


def test_an_empty_choice_is_refused() -> None:
    for empty in ([], (), [""]):
        with pytest.raises(InvalidPreferences):
            check_preferences(empty, "daily", CHOICES)
    with pytest.raises(InvalidPreferences, match="at least one section"):
        check_preferences([], "daily", CHOICES)


@pytest.mark.parametrize(
    "shape", ["Tech News", {"Tech News": True}, 5, True, [["Tech News"]], [5], [None], [{"a": 1}], [1.5]]
)
def test_sections_of_the_wrong_shape_are_refused(shape: object) -> None:
    with pytest.raises(InvalidPreferences) as refused:
        check_preferences(shape, "daily", CHOICES)
    assert str(refused.value).isprintable()


@pytest.mark.parametrize(
    "value", ["hourly", "monthly", "dayly", "weekly\x00", "\ud800", "daily\r\n", 7, ["daily"]]
)
def test_a_frequency_other_than_daily_or_weekly_is_refused_naming_it(value: object) -> None:
    with pytest.raises(InvalidPreferences, match="daily or weekly") as refused:
        check_preferences(None, value, CHOICES)
    message = str(refused.value)
    assert message.isprintable()
    if isinstance(value, str) and value.isprintable():
        assert repr(value) in message


def test_weekly_is_refused_without_a_weekly_edition() -> None:
    with pytest.raises(InvalidPreferences, match="no weekly edition"):
        check_preferences(["Reviews"], "weekly", DAILY_ONLY)
    # a weekly reader's default, where weekly is gone from the config: daily
    assert check_preferences(None, None, DAILY_ONLY, default_frequency=Frequency.WEEKLY) == Preferences()
    assert (
        check_preferences(None, None, CHOICES, default_frequency=Frequency.WEEKLY).frequency
        == Frequency.WEEKLY
    )


def test_section_lists_from_one_line_keep_a_name_that_holds_the_separator() -> None:
    assert parse_sections("", CHOICES) is None and parse_sections("  ", CHOICES, ",") is None
    assert parse_sections("Tech News;Reviews", CHOICES) == ["Tech News", "Reviews"]
    assert parse_sections("Tech News,Science, Health,Reviews", CHOICES, ",") == [
        "Tech News",
        "Science, Health",
        "Reviews",
    ]
    assert parse_sections("science, health", CHOICES, ",") == ["science, health"]
    assert parse_sections("Tech News,Sports", CHOICES, ",") == ["Tech News", "Sports"]  # the rule refuses
    assert parse_sections(";", CHOICES) == []  # the rule's empty choice


def test_what_a_reader_takes_when_the_config_changes() -> None:
    assert effective_sections((), CHOICES) == SECTIONS
    assert effective_sections(("Reviews", "Tech News"), CHOICES) == ("Tech News", "Reviews")
    assert effective_sections(("Gone",), CHOICES) == SECTIONS  # all they chose is gone: everything
    assert effective_sections(("Gone", "Reviews"), CHOICES) == ("Reviews",)
    assert chosen_sections(("Gone",), CHOICES) == () and chosen_sections(SECTIONS, CHOICES) == ()
    held = [(), ("Reviews",), ("Tech News",), ("Gone",), ("Reviews", "Tech News")]
    assert sets_taking("Reviews", held, CHOICES) == [(), ("Reviews",), ("Gone",), ("Reviews", "Tech News")]
    counts = choice_counts([((), Frequency.DAILY, 10), (("Reviews",), Frequency.WEEKLY, 3)], CHOICES)
    assert counts.sections == {"Tech News": 10, "Science, Health": 10, "Reviews": 13}
    assert counts.frequencies == {"daily": 10, "weekly": 3}


# -- the preference token -------------------------------------------------------------------------


def test_a_preference_token_is_its_readers_own_and_no_other_token() -> None:
    tokens = Tokens(SECRET)
    token = tokens.preferences(42)
    assert tokens.read_preferences(token) == 42
    assert "42" not in token.split(".")[1] and "@" not in token
    assert tokens.preferences(43) != token
    unsubscribe = tokens.unsubscribe(42)
    assert unsubscribe != token
    with pytest.raises(BadToken):
        tokens.read_preferences(unsubscribe)  # an unsubscribe token is not a preference token
    with pytest.raises(BadToken):
        tokens.read_unsubscribe(token)  # nor the other way round
    with pytest.raises(BadToken):
        tokens.read_preferences(tokens.confirm(42))
    with pytest.raises(BadToken):
        Tokens("another-secret-key-entirely").read_preferences(token)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for i, c in enumerate(token):  # every one-character change
        for other in {alphabet[(alphabet.index(c) + 1) % len(alphabet)], "=", "\x00", "é"}:
            changed = token[:i] + other + token[i + 1 :]
            with pytest.raises(BadToken):
                tokens.read_preferences(changed)
    for bad in [
        "",
        ".",
        "MQ",
        "MQ.",
        token + "x",
        token[:-1],
        "x" * 10_000,
        "\ud800.x",
        "0." + token.split(".")[1],
    ]:
        with pytest.raises(BadToken):
            tokens.read_preferences(bad)


def test_a_confirm_token_carries_the_signups_choice_and_old_ones_still_read() -> None:
    tokens = Tokens(SECRET)
    assert tokens.read_confirm_choice(tokens.confirm(7)) == (7, [])
    carried = tokens.confirm(7, [["Reviews"], "weekly"])
    assert tokens.read_confirm_choice(carried) == (7, [["Reviews"], "weekly"])
    assert tokens.read_confirm(carried) == 7
    with pytest.raises(BadToken):
        tokens.read_confirm(carried[:-2] + ("A" if carried[-2] != "A" else "B") + carried[-1])


# -- stored choices, the migration and the tally --------------------------------------------------


def _tally(store: Store) -> dict[tuple[str, str, tuple[str, ...]], int]:
    with store.read() as s:
        return {
            (t.status.value, t.frequency.value, t.sections): t.n
            for t in s.scalars(select(PreferenceTally))
            if t.n
        }


def _counted(store: Store) -> dict[tuple[str, str, tuple[str, ...]], int]:
    """The same counts the slow way, over the whole table."""
    with store.read() as s:
        rows = s.execute(
            select(Subscriber.status, Subscriber.frequency, Subscriber.sections, func.count()).group_by(
                Subscriber.status, Subscriber.frequency, Subscriber.sections
            )
        ).all()
    return {(st.value, f.value, sec): n for st, f, sec, n in rows}


def test_choices_are_stored_and_the_triggers_keep_the_tally(store: Store) -> None:
    reviews_weekly = Preferences(("Reviews",), Frequency.WEEKLY)
    ada, _ = store.add_subscriber("ada@example.com", "Ada", now=NOW, preferences=reviews_weekly)
    bob, _ = store.add_subscriber("bob@example.com", None, now=NOW)
    assert (ada.sections, ada.frequency) == reviews_weekly and (bob.sections, bob.frequency) == Preferences()
    store.import_subscribers(
        [
            NewSubscriber(
                f"r{i}@example.com", None, Preferences(("Tech News", "Reviews")) if i % 2 else Preferences()
            )
            for i in range(10)
        ],
        now=NOW,
    )
    assert _tally(store) == _counted(store)
    assert _tally(store)[("active", "weekly", ("Reviews",))] == 1
    assert _tally(store)[("active", "daily", ("Reviews", "Tech News"))] == 5  # one spelling, sorted
    store.set_preferences(bob.id, Preferences(("Tech News", "Reviews"), Frequency.WEEKLY), name="Bob")
    store.unsubscribe(ada.id, now=NOW)
    store.set_preferences(ada.id, Preferences(), name=None)  # saving changes no status
    assert store.get_subscriber_by_id(ada.id).status == SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    store.add_subscriber(
        "bob@example.com", None, now=NOW, preferences=Preferences()
    )  # the CLI on a known one
    store.erase_subscriber(store.get_subscriber("r3@example.com").id, now=NOW)  # type: ignore[union-attr]
    with store.write() as s:
        s.execute(text("DELETE FROM subscribers WHERE email = 'r4@example.com'"))
    assert _tally(store) == _counted(store)
    by_frequency = {
        t.frequency.value: t.n
        for t in store.preference_tally(status=SubscriberStatus.ACTIVE)
        if t.sections == ()
    }
    assert by_frequency == {"daily": 5}  # bob, r0 r2 r6 r8


def test_a_confirmation_stores_the_signups_choice_once(store: Store) -> None:
    sub, due = store.request_subscription(
        "new@example.com", None, ip=None, now=NOW, resend_after=NOW - NOW, closed_resend_after=NOW - NOW
    )
    chosen = Preferences(("Reviews",), Frequency.WEEKLY)
    confirmed = store.confirm_subscriber(sub.id, now=NOW, preferences=chosen)
    assert confirmed is not None and (confirmed.sections, confirmed.frequency) == chosen
    store.set_preferences(sub.id, Preferences(("Tech News",)), name=None)  # changed on the page later
    again = store.confirm_subscriber(sub.id, now=NOW, preferences=chosen)  # the old link clicked again
    assert again is not None and again.sections == ("Tech News",) and again.frequency == Frequency.DAILY


def test_search_filters_by_frequency_and_sets_of_sections(store: Store) -> None:
    for i, prefs in enumerate(
        [Preferences(), Preferences(("Reviews",), Frequency.WEEKLY), Preferences(("Tech News",))]
    ):
        store.add_subscriber(f"s{i}@example.com", None, now=NOW, preferences=prefs)
    weekly = store.search_subscribers(frequency=Frequency.WEEKLY)
    assert [s.email for s in weekly] == ["s1@example.com"]
    held = {t.sections for t in store.preference_tally()}
    taking = sets_taking("Reviews", held, CHOICES)
    assert [s.email for s in store.search_subscribers(sections_in=taking)] == [
        "s0@example.com",
        "s1@example.com",
    ]
    assert store.search_subscribers(sections_in=[]) == []


def test_a_name_with_quotes_or_nul_in_a_section_is_stored_whole_or_clean(store: Store) -> None:
    odd = ('Q "uoted" \\ back', "Zoë ☕", "NUL\x00here", "lone \ud800")
    sub, _ = store.add_subscriber("odd@example.com", None, now=NOW, preferences=Preferences(odd))
    stored = store.get_subscriber_by_id(sub.id)
    assert stored is not None and set(stored.sections) == {
        'Q "uoted" \\ back',
        "Zoë ☕",
        "NULhere",
        "lone \ufffd",
    }
    assert _tally(store) == _counted(store)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_at_0013(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL: a SQLite file, or a schema of its own on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips (or fails) as the others do without a server
    import psycopg

    schema = f"nlprefs_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_an_existing_database_upgrades_with_every_reader_on_all_sections_daily(database_at_0013: str) -> None:
    from alembic import command
    from alembic.config import Config

    store = Store(database_at_0013)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(ROOT / "newsletter/db/migrations"))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0013")
        for i, status in enumerate(
            ["active", "active", "pending", "unsubscribed", "bounced", "complained", "active"]
        ):
            with store.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO subscribers (email, name, status, source, bounce_count, created_at) "
                        "VALUES (:e, NULL, :s, 'cli', 0, :t)"
                    ),
                    {"e": f"old{i}@example.com", "s": status, "t": NOW},
                )
        assert store.migrate() >= "0014"
        subscribers = list(store.iter_subscribers())
        assert len(subscribers) == 7
        assert all(s.sections == () and s.frequency == Frequency.DAILY for s in subscribers)
        assert _tally(store) == {
            ("active", "daily", ()): 3,
            ("pending", "daily", ()): 1,
            ("unsubscribed", "daily", ()): 1,
            ("bounced", "daily", ()): 1,
            ("complained", "daily", ()): 1,
        }
        store.add_subscriber("new@example.com", None, now=NOW, preferences=Preferences(("Reviews",)))
        assert _tally(store) == _counted(store)  # the triggers run from now on
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0013")  # and the way back
            command.upgrade(cfg, "head")
        assert _tally(store) == _counted(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_truncating_the_subscribers_empties_the_tally(postgres_store: Store) -> None:
    postgres_store.add_subscriber("t@example.com", None, now=NOW, preferences=Preferences(("Reviews",)))
    assert _tally(postgres_store)
    with postgres_store.engine.begin() as conn:
        conn.execute(text("TRUNCATE deliveries, bounce_events, subscribers RESTART IDENTITY CASCADE"))
    assert _tally(postgres_store) == {}


@pytest.mark.postgres
def test_concurrent_choices_and_signups_never_deadlock_on_postgresql(postgres_store: Store) -> None:
    """Readers swapping between two sets while an import adds readers holding both: every change
    to the tally first locks the subscriber tally's row, so no two writers wait on each other."""
    import threading

    store = postgres_store
    a, b = Preferences(("Reviews",)), Preferences(("Tech News",))
    ids = [store.add_subscriber(f"c{i}@example.com", None, now=NOW, preferences=a)[0].id for i in range(8)]
    errors: list[BaseException] = []

    def swap(sub_id: int, first: Preferences, second: Preferences) -> None:
        try:
            for n in range(30):
                store.set_preferences(sub_id, first if n % 2 else second, name=None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def load(start: int) -> None:
        try:
            for k in range(10):
                rows = [
                    NewSubscriber(f"i{start}-{k}-{j}@example.com", None, (b, a)[j % 2]) for j in range(20)
                ]
                store.import_subscribers(rows, now=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=swap, args=(i, a, b) if n % 2 else (i, b, a)) for n, i in enumerate(ids)
    ]
    threads += [threading.Thread(target=load, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _tally(store) == _counted(store)


def test_settings_fixture_offers_no_choice(settings: Settings) -> None:
    """The plain test config: one source without a section, no weekly edition: nothing to offer."""
    assert Choices.of(settings) == Choices((), False) and not Choices.of(settings).offered

"""Found by an outside attack on SPEC 8, kept as regressions: `send --json` on the weekly day,
turning the weekly edition off after it was built, and the SQLite downgrade of migration 0015."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from newsletter.config import WEEKDAYS
from newsletter.store import Store

from ..support.helpers import ROOT, SmtpSink, run_cli, write_config

FEEDS = [("Tech", ROOT / "samples/feeds/tech-news.xml"), ("Deep", ROOT / "samples/feeds/in-depth.atom")]


def _config(tmp_path: Path, sink: SmtpSink, sections: tuple[str, str], weekly_day: str = "") -> Path:
    return write_config(
        tmp_path,
        sources=[(n, str(u), s) for (n, u), s in zip(FEEDS, sections, strict=True)],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
        f'[digest]\nweekly_day = "{weekly_day}"\nmin_stories = 1\n',
    )


def _built_on_the_weekly_day(tmp_path: Path, sink: SmtpSink) -> tuple[Path, str]:
    """Today is the weekly day; a daily and a weekly reader; both editions built."""
    day = WEEKDAYS[datetime.now(UTC).weekday()]
    config = _config(tmp_path, sink, ("Tech", "Deep"), weekly_day=day)
    run_cli(config, "init")
    run_cli(config, "subscribers", "add", "d@example.com")
    run_cli(config, "subscribers", "add", "w@example.com", "--frequency", "weekly")
    run_cli(config, "build")
    return config, day


def test_send_json_on_the_weekly_day_is_one_json_document(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    config, _ = _built_on_the_weekly_day(tmp_path, smtp_sink)
    out = run_cli(config, "send", "--json").stdout
    json.loads(out)  # two documents back to back: "Extra data"


def test_weekly_turned_off_after_the_build_gives_a_weekly_reader_one_mail(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    config, day = _built_on_the_weekly_day(tmp_path, smtp_sink)
    config.write_text(config.read_text().replace(f'weekly_day = "{day}"', 'weekly_day = ""'))
    run_cli(config, "send")
    assert len(smtp_sink.by_recipient()["w@example.com"]) == 1


def _alembic(url: str, step: str, rev: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "newsletter/db/migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    getattr(command, step)(cfg, rev)


def _triggers(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return sorted(r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"))


def test_sqlite_downgrade_and_upgrade_keeps_the_delivery_tally_triggers(tmp_path: Path, env: None) -> None:
    db = tmp_path / "subscribers.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    before = _triggers(db)
    _alembic(f"sqlite:///{db}", "downgrade", "0014")
    _alembic(f"sqlite:///{db}", "upgrade", "head")
    assert _triggers(db) == before  # delivery_tally_insert/update/delete are gone


def test_a_refused_sqlite_downgrade_leaves_nothing_behind(tmp_path: Path, env: None) -> None:
    from newsletter.db.models import Edition

    db = tmp_path / "subscribers.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    now = datetime.now(UTC)
    made: dict[str, object] = {
        "edition": Edition.WEEKLY,
        "story_ids": [],
        "placeholder_key": None,
        "now": now,
    }
    store.create_issue(now.date(), content=lambda _i: ("W", "", "<p>w</p>", "w"), **made)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="weekly issues"):
        _alembic(f"sqlite:///{db}", "downgrade", "0014")
    with sqlite3.connect(db) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {t for t in tables if t.startswith("_alembic_tmp")}  # _alembic_tmp_deliveries stays

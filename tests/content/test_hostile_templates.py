"""Found by an outside attack on SPEC 10, kept as regressions: overrides that would fail a later
build (a branch the sample does not take, an unknown filter, bytes that are not UTF-8) and a
templates folder that is a file are named by the check, FILE:LINE: reason, exit 2."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.store import Store

from ..support.helpers import ROOT, run_cli, write_config

PACKAGED_TXT = (ROOT / "newsletter/templates/email/digest.txt.j2").read_text(encoding="utf-8")


def _weekly_today(tmp_path: Path) -> Path:
    today = dt.datetime.now(dt.UTC).strftime("%A").lower()
    config = write_config(tmp_path, extra=f'[digest]\nweekly_day = "{today}"\n')
    run_cli(config, "init")
    return config


@pytest.mark.parametrize(
    "line",
    [
        "{% if weekly %}This week: {{ newsletter.logo_url }}{% endif %}",  # the docs' own trap, on a branch
        "{% if weekly %}{{ lead.headline }}{% endif %}",  # a story field renamed
        "{% if weekly %}{{ subject | shout }}{% endif %}",  # a filter this version lacks
    ],
)
def test_check_catches_an_override_the_weekly_build_would_die_on(
    tmp_path: Path, env: None, line: str
) -> None:
    config = _weekly_today(tmp_path)
    mine = tmp_path / "templates/email/digest.txt.j2"
    mine.parent.mkdir(parents=True)
    mine.write_text(line + "\n" + PACKAGED_TXT, encoding="utf-8")
    check = run_cli(config, "templates", "check", check=False)
    build = run_cli(config, "build", check=False)
    store = Store(load_settings(config).database_url)
    built = store.issue_counts(limit=5)
    store.close()
    assert check.returncode == 2 and f"{mine}:1:" in check.stderr, "check passed it"
    assert build.returncode == 2 and built == [], "build went ahead on a broken override"


def test_an_undecodable_override_is_file_line_reason_exit_2(tmp_path: Path, env: None) -> None:
    config = write_config(tmp_path)
    run_cli(config, "init")
    mine = tmp_path / "templates/email/_masthead.html.j2"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"<tr><td>\xff\xfe caf\xe9</td></tr>\n")  # saved as Latin-1
    for args in (("templates", "check"), ("build",)):
        proc = run_cli(config, *args, check=False)
        assert proc.returncode == 2 and str(mine) in proc.stderr, proc.stderr


def test_a_templates_dir_that_is_a_file_is_refused_by_name(tmp_path: Path, env: None) -> None:
    config = write_config(tmp_path)
    run_cli(config, "init")
    (tmp_path / "templates").write_text("not a folder", encoding="utf-8")
    check = run_cli(config, "templates", "check", check=False)
    eject = run_cli(config, "templates", "eject", check=False)
    assert eject.returncode == 2 and "unexpected" not in eject.stderr
    assert check.returncode != 0

"""Found by an outside attack on SPEC 9, kept as regressions: hold/approve on issues that cannot take
them (a huge id is no issue, not an overflow), and review_default = "hold" without a review."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.errors import ConfigError

from ..support.helpers import FeedServer, SmtpSink, run_cli
from ..support.review import review_config


def test_cli_hold_and_approve_on_missing_and_sent_issues(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    config = review_config(tmp_path, feed_server, smtp_sink, review="review_minutes = 0")
    run_cli(config, "init")
    out = []
    for args in (
        ("hold",),
        ("approve",),
        ("hold", "--issue", "99"),
        ("hold", "--issue", "-1"),
        ("hold", "--issue", "x"),
        ("hold", "--issue", str(2**70)),
    ):
        p = run_cli(config, *args, check=False)
        out.append((args, p.returncode, (p.stdout + p.stderr).strip()[-160:]))
    assert all(rc in (1, 2) and "Traceback" not in text for _a, rc, text in out), out
    huge = out[-1][2]  # an id past any integer column: no such issue, as the console says
    assert "there is no issue" in huge and "Overflow" not in huge, huge


def test_review_default_hold_without_review_minutes_is_refused_by_name(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    """SPEC 9: with "hold", nothing goes out until an editor approves; without a review there is no
    editor's hour to approve in, so the key is refused rather than taken and ignored."""
    config = review_config(tmp_path, feed_server, smtp_sink, review='review_default = "hold"')
    with pytest.raises(ConfigError, match="schedule.review_default"):
        load_settings(config)

"""Found by an outside attack on SPEC 9, kept as a regression: a hold committed between the
scheduler's look at `held` and the start of the send moves the issue's version, so the send reads
it again and does not go."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import newsletter.schedule as schedule_module
from newsletter.delivery.sending import send as send_issue
from newsletter.issues.edits import Action, hold_issue

from ..support.helpers import FeedServer, SmtpSink, run_cli
from ..support.review import READER, mails_to, reviewed


def test_a_hold_that_lands_after_the_schedulers_look_is_not_ignored(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, store, lines, issue, send_at = reviewed(
        tmp_path, feed_server, smtp_sink, "review_minutes = 60"
    )
    real_send = send_issue
    accepted: list[bool] = []

    def editor_clicks_hold_now(settings: Any, st: Any, iss: Any, **kw: Any) -> Any:
        # the interleaving: held_reason() said "not held"; the editor's Hold commits; the send starts
        accepted.append(hold_issue(store, iss.id, Action.HOLD, who="ann", now=datetime.now(UTC)))
        return real_send(settings, st, iss, **kw)

    monkeypatch.setattr(schedule_module, "send", editor_clicks_hold_now)
    scheduler.run_once(send_at)
    after = store.get_issue(issue.id)
    assert accepted == [True] and after is not None and after.held  # the hold was taken, and logged
    assert [e.action for e in store.issue_edits(issue.id)][0] == "hold"
    status = json.loads(run_cli(tmp_path / "config.toml", "status", "--json").stdout)["issues"][0]
    # expected: either the hold is refused (409, send begun) or the issue is not sent
    assert mails_to(smtp_sink, READER) == [], (after.status, status["held"], lines[-1])
    store.close()

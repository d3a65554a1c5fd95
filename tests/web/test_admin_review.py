"""The editor's hour in the console (SPEC 9), through Flask's test client on a real SQLite file
with mail over real SMTP: story edits, subject and intro, hold, approve and send now, the log,
CSRF on every form, 400 for what an issue cannot take, 409 once the send has begun."""

from __future__ import annotations

import html
from typing import Any

from flask.testing import FlaskClient

from newsletter.db.models import Issue
from newsletter.web import PUBLIC_BODY_LIMIT

from ..support.helpers import Console, SmtpSink, token, wait_for


def _post(client: FlaskClient, issue: Issue, path: str, **form: Any) -> Any:
    csrf = token(client, f"/admin/issues/{issue.id}")
    return client.post(f"/admin/issues/{issue.id}/{path}", data={"csrf_token": csrf, **form})


def _faces(console: Console, issue: Issue) -> list[int]:
    found = console.store.get_issue(issue.id)
    assert found is not None
    return [item[0].id for item in console.store.issue_items(found)]


def test_an_editor_drops_moves_and_restores_stories_and_each_edit_is_logged(
    client: FlaskClient, console: Console, built: Issue
) -> None:
    first, second, third, *_ = _faces(console, built)
    assert _post(client, built, "stories", story=third, action="drop").status_code == 303
    assert third not in _faces(console, built)
    assert _post(client, built, "stories", story=second, action="lead").status_code == 303
    assert _faces(console, built)[0] == second
    page = client.get(f"/admin/issues/{built.id}").get_data(as_text=True)
    assert 'id="dropped"' in page and f'<tr data-story="{third}">' in page
    log = page.split('id="edits"', 1)[1]
    assert "<td>ed</td><td>lead</td>" in log and "<td>ed</td><td>drop</td>" in log
    assert log.index(">lead<") < log.index(">drop<")  # newest first
    assert _post(client, built, "stories", story=third, action="restore").status_code == 303
    assert third in _faces(console, built)
    # the preview is the issue rendered again
    preview = client.get(f"/admin/issues/{built.id}/html").get_data(as_text=True)
    assert (
        console.store.stories_by_id([second])[second].title
        in preview.split('<h1 class="lead-title"', 1)[1][:400]
    )
    # what the issue cannot take: 400, and nothing changed
    version = _version(console, built)
    for form in (
        {"story": first, "action": "explode"},
        {"story": "x", "action": "drop"},
        {"story": 999999, "action": "drop"},
        {"story": second, "action": "up"},  # the lead
    ):
        assert _post(client, built, "stories", **form).status_code == 400, form
    assert _version(console, built) == version
    # every form carries CSRF
    assert (
        client.post(f"/admin/issues/{built.id}/stories", data={"story": first, "action": "drop"}).status_code
        == 400
    )


def test_subject_and_intro_are_escaped_one_line_and_checked(
    client: FlaskClient, console: Console, built: Issue
) -> None:
    intro = "<img src=x onerror=alert(1)> Two lines from the desk."
    answer = _post(client, built, "edit", subject="Morning\r\nBcc: x@example.com <b>", intro=intro)
    assert answer.status_code == 303
    issue = console.store.get_issue(built.id)
    assert issue is not None and issue.subject == "Morning Bcc: x@example.com <b>" and issue.intro == intro
    preview = client.get(f"/admin/issues/{built.id}/html").get_data(as_text=True)
    assert html.escape(intro, quote=False) in preview and "<img src=x" not in preview
    page = client.get(f"/admin/issues/{built.id}").get_data(as_text=True)
    assert "<b>" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Two lines from the desk." in page.split("Text part", 1)[1]  # the text part shows it
    for bad in ({"subject": "a\x00b", "intro": ""}, {"subject": "", "intro": "ring\x07"}):
        assert _post(client, built, "edit", **bad).status_code == 400
    assert _post(client, built, "edit", subject="", intro="x" * (PUBLIC_BODY_LIMIT + 1)).status_code == 413
    assert console.store.get_issue(built.id).intro == intro  # type: ignore[union-attr]


def test_hold_approve_and_send_now_then_every_edit_answers_409(
    client: FlaskClient, console: Console, built: Issue, smtp_sink: SmtpSink
) -> None:
    assert _post(client, built, "hold").status_code == 303
    page = client.get(f"/admin/issues/{built.id}").get_data(as_text=True)
    assert 'id="held"' in page and 'id="approve"' in page
    assert _post(client, built, "approve").status_code == 303
    assert not console.store.get_issue(built.id).held  # type: ignore[union-attr]
    assert _post(client, built, "send").status_code == 303
    assert wait_for(lambda: smtp_sink.by_recipient().get("reader@example.org") is not None)
    assert wait_for(lambda: console.store.get_issue(built.id).status == "sent")  # type: ignore[union-attr]
    before = console.store.get_issue(built.id)
    logged = console.store.issue_edits(built.id)
    assert [e.action for e in logged] == ["send", "approve", "hold"]
    story = _faces(console, built)[1]
    for path, form in (
        ("stories", {"story": story, "action": "drop"}),
        ("edit", {"subject": "late", "intro": "too late"}),
        ("hold", {}),
        ("approve", {}),
        ("send", {}),
    ):
        answer = _post(client, built, path, **form)
        assert answer.status_code == 409, path
        assert "its send has begun" in answer.get_data(as_text=True)
    after = console.store.get_issue(built.id)
    assert after is not None and before is not None
    assert (after.html, after.subject, after.version) == (before.html, before.subject, before.version)
    assert console.store.issue_edits(built.id) == logged
    assert 'id="review"' not in client.get(f"/admin/issues/{built.id}").get_data(as_text=True)


def _version(console: Console, issue: Issue) -> int:
    found = console.store.get_issue(issue.id)
    assert found is not None
    return found.version

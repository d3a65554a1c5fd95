"""Attack 23 probes on the editor's console routes (SPEC 9): what held."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient

from newsletter.db.models import Issue
from newsletter.operators import hash_password

from ..support.helpers import PASSWORD, Console, log_in, token


def _post(client: FlaskClient, issue_id: int, path: str, **form: Any) -> Any:
    csrf = token(client, "/admin/")
    return client.post(f"/admin/issues/{issue_id}/{path}", data={"csrf_token": csrf, **form})


def _version(console: Console, issue: Issue) -> int:
    return console.store.get_issue(issue.id).version  # type: ignore[union-attr]


def test_hostile_ids_actions_sessions_and_bodies_change_nothing(
    client: FlaskClient, console: Console, built: Issue
) -> None:
    v = _version(console, built)
    for path in ("stories", "edit", "hold", "approve", "send"):
        for iid in (2**31, 2**63, 10**30):
            assert _post(client, iid, path, story=1, action="drop").status_code == 404
    for story in ("-1", "1e3", "0x10", "", str(2**40)):
        assert _post(client, built.id, "stories", story=story, action="drop").status_code == 400
    for action in ("DROP", "drop ", "hold", "send", "edit", ""):
        assert _post(client, built.id, "stories", story=1, action=action).status_code == 400
    assert _version(console, built) == v
    # no login: sent to the login page, nothing changed
    anon = console.app.test_client()
    assert anon.post(f"/admin/issues/{built.id}/hold", data={}).status_code in (302, 303, 400, 401)
    # another operator's CSRF token in this session
    console.store.save_operator("ann", hash_password(PASSWORD), now=datetime.now(UTC))
    other = console.app.test_client()
    assert log_in(other, name="ann") == 302
    theirs = token(other, "/admin/")
    answer = client.post(f"/admin/issues/{built.id}/hold", data={"csrf_token": theirs})
    assert answer.status_code == 400
    # raw bodies: a lone surrogate encoded, NUL, a body over the limit
    csrf = token(client, "/admin/")
    raw = b"csrf_token=" + csrf.encode() + b"&subject=a%ED%A0%80b&intro=x"
    r = client.post(
        f"/admin/issues/{built.id}/edit", data=raw, content_type="application/x-www-form-urlencoded"
    )
    after = console.store.get_issue(built.id)
    assert r.status_code in (303, 400) and "\ud800" not in (after.subject if after else "")
    r = _post(client, built.id, "edit", subject="ok\u2028Bcc: x@example.com\u0085", intro="")
    assert r.status_code == 400  # NEL is a control character
    r = _post(client, built.id, "edit", subject="ok\u2028Bcc: x@example.com\u2029y", intro="")
    assert r.status_code == 303
    assert console.store.get_issue(built.id).subject == "ok Bcc: x@example.com y"  # type: ignore[union-attr]
    assert _post(client, built.id, "edit", subject="", intro="x" * 70000).status_code == 413

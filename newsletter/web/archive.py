"""GET /archive, GET /archive/ID (the web version, with no subscriber's token), GET /healthz.
Only issues on their way to readers are shown: not one merely built, nor one paused."""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, make_response, render_template

from ..content.render import render_web
from . import services

bp = Blueprint("archive", __name__)


@bp.get("/archive")
def index() -> str:
    return render_template("web/archive.html.j2", issues=services().store.archived_issues(limit=365))


@bp.get("/archive/<int:issue_id>")
def issue(issue_id: int) -> Response:
    svc = services()
    found = svc.store.archived_issue(issue_id)
    if found is None:
        abort(404)
    return make_response(render_web(found.html, found.placeholder_key, svc.settings))


@bp.get("/healthz")
def health() -> Response:
    ok = services().store.ping()
    response = jsonify(
        {"status": "ok"} if ok else {"status": "unavailable", "reason": "database unreachable"}
    )
    response.status_code = 200 if ok else 503
    return response

"""GET /unsubscribe/TOKEN (a page with one button; changes nothing: link scanners fetch GETs) and
POST /unsubscribe/TOKEN (RFC 8058 one-click: at once, idempotent, no cookies, no login)."""

from __future__ import annotations

from flask import Blueprint, render_template

from ..delivery.tokens import BadToken
from . import services

bp = Blueprint("unsubscribe", __name__)


def _subscriber(token: str) -> int | None:
    try:
        return services().tokens.read_unsubscribe(token)
    except BadToken:
        return None


@bp.get("/unsubscribe/<token>")
def page(token: str) -> tuple[str, int]:
    subscriber_id = _subscriber(token)
    sub = services().store.get_subscriber_by_id(subscriber_id) if subscriber_id else None
    if sub is None:
        return render_template(
            "web/message.html.j2", title="Link not valid", message="This unsubscribe link is not valid."
        ), 400
    return render_template("web/unsubscribe.html.j2", done=False, token=token, email=sub.email), 200


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> tuple[str, int]:
    svc = services()
    subscriber_id = _subscriber(token)
    sub = svc.store.get_subscriber_by_id(subscriber_id) if subscriber_id else None
    if sub is None:
        return render_template(
            "web/message.html.j2", title="Link not valid", message="This unsubscribe link is not valid."
        ), 400
    svc.store.unsubscribe(sub.id, now=svc.now())  # body "List-Unsubscribe=One-Click" or the button: same
    return render_template("web/unsubscribe.html.j2", done=True, token=token, email=sub.email), 200

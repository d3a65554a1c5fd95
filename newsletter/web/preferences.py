"""GET /preferences/TOKEN (a reader's choices: sections, frequency, name, and the unsubscribe
button) and POST /preferences/TOKEN (saves them, from a form or JSON; idempotent; no login, no
cookie: the signed token is the key, as for one-click unsubscribes).

Every choice goes through subscribers.rules.check_preferences, the rule the signup form, the
command line and the CSV import share. On any error nothing is changed, and saving changes no
status: an unsubscribed reader stays unsubscribed."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, make_response, render_template

from ..db.models import LIVE_STATUSES, Subscriber
from ..delivery.tokens import BadToken
from ..links import Links
from ..subscribers.records import ERASED_DOMAIN
from ..subscribers.rules import (
    Choices,
    InvalidSubscriber,
    check_name,
    check_preferences,
    chosen_sections,
    effective_sections,
)
from . import Services, services
from .choices import BadBody, posted, wants_json

__all__ = ["bp", "preferences_url"]

bp = Blueprint("preferences", __name__)

NOT_VALID = "This link to your choices is not valid: use the one at the foot of your latest issue."


def preferences_url(svc: Services, subscriber_id: int) -> str:
    """BASE_URL/preferences/TOKEN: where a reader chooses what they get."""
    return Links(svc.settings.newsletter.base_url).preferences(svc.tokens.preferences(subscriber_id))


def _reader(token: str) -> Subscriber | None:
    svc = services()
    try:
        subscriber_id = svc.tokens.read_preferences(token)
    except BadToken:
        return None
    sub = svc.store.get_subscriber_by_id(subscriber_id)
    if sub is None or sub.email.endswith(ERASED_DOMAIN):  # erased: nobody's choices to show
        return None
    return sub


@bp.get("/preferences/<token>")
def page(token: str) -> Response:
    sub = _reader(token)
    return _not_valid() if sub is None else _answer(sub, token, 200)


@bp.post("/preferences/<token>")
def save(token: str) -> Response:
    svc = services()
    sub = _reader(token)
    if sub is None:
        return _not_valid()
    try:
        body = posted()
        name = check_name(body.fields["name"] or None) if "name" in body.fields else sub.name
        # a form with no box ticked sends no `sections` at all: that is an empty choice, refused
        chosen = [] if body.sections is None else body.sections
        frequency = body.fields.get("frequency")
        preferences = check_preferences(chosen, frequency, _choices(), default_frequency=sub.frequency)
    except (BadBody, InvalidSubscriber) as exc:
        return _answer(sub, token, 400, error=f"Nothing was changed: {exc}.")
    saved = svc.store.set_preferences(sub.id, preferences, name=name)
    return _not_valid() if saved is None else _answer(saved, token, 200, saved=True)


def _choices() -> Choices:
    return Choices.of(services().settings)


def _answer(
    sub: Subscriber, token: str, status: int, *, error: str | None = None, saved: bool = False
) -> Response:
    svc = services()
    choices = _choices()
    if wants_json():
        body = {"error": error} if error else _as_json(sub, choices)
        response = jsonify(body)
    else:
        response = make_response(
            render_template(
                "web/preferences.html.j2",
                sub=sub,
                token=token,
                choices=choices,
                weekly_day=svc.settings.digest.weekly_day,
                taken=effective_sections(sub.sections, choices),
                subscribed=sub.status in LIVE_STATUSES,
                unsubscribe_token=svc.tokens.unsubscribe(sub.id),
                error=error,
                saved=saved,
            )
        )
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"  # a reader's address and choices: never kept by a cache
    return response


def _as_json(sub: Subscriber, choices: Choices) -> dict[str, object]:
    return {
        "status": "ok",
        "subscribed": sub.status in LIVE_STATUSES,
        "sections": list(chosen_sections(sub.sections, choices)),
        "frequency": sub.frequency.value,
        "name": sub.name,
        "offered": {
            "sections": list(choices.sections),
            "frequencies": [f.value for f in choices.frequencies],
        },
    }


def _not_valid() -> Response:
    if wants_json():
        response = jsonify({"error": NOT_VALID})
    else:
        response = make_response(
            render_template("web/message.html.j2", title="Link not valid", message=NOT_VALID)
        )
    response.status_code = 400
    return response

"""GET / (the form), POST /subscribe (double opt-in), GET /confirm/TOKEN (a page with a button) and
POST /confirm/TOKEN (the confirmation)."""

from __future__ import annotations

import time
from datetime import timedelta

from flask import Blueprint, Response, jsonify, make_response, render_template, request

from ..db.models import Frequency, Subscriber, SubscriberStatus
from ..delivery.tokens import BadToken
from ..errors import NewsletterError
from ..links import Links
from ..subscribers.records import Preferences
from ..subscribers.rules import Choices, InvalidPreferences, check_name, check_preferences, normalise_email
from . import Services, services
from .choices import BadBody, Posted, posted, wants_json
from .preferences import preferences_url

bp = Blueprint("signup", __name__)

RESEND_AFTER = timedelta(hours=1)
# A bounced or complained address: one confirmation after its closing, then one in 30 days at most,
# so the form cannot mail a complainer again and again, nor a dead mailbox more than monthly.
CLOSED_RESEND_AFTER = timedelta(days=30)
CHECK_INBOX = "Thanks! Check your inbox: we sent you a link to confirm your subscription."


def _answer(
    status: int,
    message: str,
    *,
    error: bool = False,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    if wants_json():
        response = jsonify({"error": message} if error else {"status": "ok", "message": message})
    else:
        page = render_template(
            "web/signup.html.j2",
            message=message,
            error=error,
            form=form or {},
            embed_action=_embed_action(),
            choices=Choices.of(services().settings),
        )
        response = make_response(page)
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


@bp.get("/")
def form() -> str:
    return render_template(
        "web/signup.html.j2",
        message=None,
        error=False,
        form={},
        embed_action=_embed_action(),
        choices=Choices.of(services().settings),
    )


def _embed_action() -> str:
    """The snippet's form posts to the configured site, never to whatever Host the request named."""
    return Links(services().settings.newsletter.base_url).subscribe()


@bp.post("/subscribe")
def subscribe() -> Response:
    svc = services()
    try:
        body = posted()
    except BadBody:
        return _answer(400, "Send the form's fields as text: email, and optionally name.", error=True)
    fields = body.fields
    if fields.get("website", "").strip():  # the honeypot: only bots fill it
        return _answer(200, CHECK_INBOX)
    client = request.remote_addr or "unknown"
    wait = svc.signups_per_ip.hit(client, time.monotonic())
    if wait is not None:
        return _answer(
            429,
            "Too many signups from your address; please try again later.",
            error=True,
            headers={"Retry-After": str(int(wait) + 1)},
        )
    try:
        email = normalise_email(fields.get("email", ""))
        name = check_name(fields.get("name") or None)
        choice = _signup_choice(body, Choices.of(svc.settings))
    except NewsletterError as exc:
        return _answer(400, str(exc), error=True, form={"email": fields.get("email", "")})
    down = svc.confirmations.relay_down()
    if down is not None:  # the same for every address: nothing stored, nobody told who is subscribed
        return _answer(
            503,
            "We cannot send mail right now; nothing was saved. Please try again in a few minutes.",
            error=True,
            headers={"Retry-After": str(int(down) + 1)},
        )
    now = svc.now()
    sub, due = svc.store.request_subscription(
        email, name, ip=client, now=now, resend_after=RESEND_AFTER, closed_resend_after=CLOSED_RESEND_AFTER
    )
    if due:  # the choice goes in the mail's link, stored when the reader confirms
        svc.confirmations.submit(sub.id, sub.email, sub.name, choice)  # mailed after this answer
    # The same answer whether the address was new, pending or active: nobody learns who subscribed.
    return _answer(200, CHECK_INBOX)


def _signup_choice(body: Posted, choices: Choices) -> Preferences | None:
    """The sections and frequency chosen on the form, checked by the one rule; None when the
    form sent neither (the defaults: every section, daily)."""
    frequency = body.fields.get("frequency")
    if body.sections is None and not frequency:
        return None
    return check_preferences(body.sections, frequency, choices)


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> tuple[str, int]:
    """A page with one button: link scanners fetch every link in a mail, and a GET changes nothing."""
    try:
        services().tokens.read_confirm(token)
    except BadToken as exc:
        return render_template("web/message.html.j2", title="Link not valid", message=str(exc)), 400
    return render_template("web/confirm.html.j2", token=token), 200


@bp.post("/confirm/<token>")
def confirm(token: str) -> tuple[str, int]:
    svc = services()
    try:
        subscriber_id, choice, issued = svc.tokens.read_confirm_issued(token)
    except BadToken as exc:
        return render_template("web/message.html.j2", title="Link not valid", message=str(exc)), 400
    sub = svc.store.confirm_subscriber(
        subscriber_id,
        now=svc.now(),
        preferences=_confirmed_choice(choice, Choices.of(svc.settings)),
        issued_at=issued,
    )
    if sub is None or sub.status != SubscriberStatus.ACTIVE:  # gone since, or closed before it was sent
        return render_template(
            "web/message.html.j2",
            title="Link not valid",
            message="This confirmation link is no longer valid: sign up again for a new one.",
        ), 400
    if (
        svc.settings.subscribers.welcome and sub.welcomed_at is None
    ):  # the one welcome, mailed after this answer
        svc.confirmations.submit(sub.id, sub.email, sub.name, welcome=True)
    return render_template(
        "web/message.html.j2",
        title="You're subscribed",
        message=f"Thanks for confirming. {svc.settings.newsletter.name} will arrive {_when(sub, svc)}.",
        link=(preferences_url(svc, sub.id), "Choose what you get"),
    ), 200


def _when(sub: Subscriber, svc: Services) -> str:
    day = svc.settings.digest.weekly_day
    return f"every {day.capitalize()}" if sub.frequency == Frequency.WEEKLY and day else "every morning"


def _confirmed_choice(choice: list[object], choices: Choices) -> Preferences | None:
    """The signup's choice carried in the confirm link, checked again by the rule: one the
    configuration no longer offers gives the defaults (the page the reader lands on can change them)."""
    if len(choice) != 2:
        return None
    try:
        return check_preferences(choice[0], choice[1], choices)
    except InvalidPreferences:
        return Preferences()

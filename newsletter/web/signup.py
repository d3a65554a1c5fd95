"""GET / (the form), POST /subscribe (double opt-in), GET /confirm/TOKEN."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, make_response, render_template, request

from ..compose import confirmation_message
from ..errors import NewsletterError
from ..models import DeliveryStatus
from ..subscribers import check_name, normalise_email
from ..tokens import BadToken
from ..transport import Envelope
from . import services

bp = Blueprint("signup", __name__)

RESEND_AFTER = timedelta(hours=1)
CHECK_INBOX = "Thanks! Check your inbox: we sent you a link to confirm your subscription."


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def _answer(
    status: int,
    message: str,
    *,
    error: bool = False,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    if _wants_json():
        response = jsonify({"error": message} if error else {"status": "ok", "message": message})
    else:
        page = render_template(
            "web/signup.html.j2",
            message=message,
            error=error,
            form=form or {},
            embed_action=request.url_root.rstrip("/") + "/subscribe",
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
        embed_action=request.url_root.rstrip("/") + "/subscribe",
    )


@bp.post("/subscribe")
def subscribe() -> Response:
    svc = services()
    fields: dict[str, Any] = request.form if request.form else (request.get_json(silent=True) or {})
    if (fields.get("website") or "").strip():  # the honeypot: only bots fill it
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
        email = normalise_email(str(fields.get("email") or ""))
        name = check_name(fields.get("name") or None)
    except NewsletterError as exc:
        return _answer(400, str(exc), error=True, form={"email": str(fields.get("email") or "")})
    now = svc.now()
    sub, send = svc.store.request_subscription(email, name, ip=client, now=now, resend_after=RESEND_AFTER)
    if send:
        token = svc.tokens.confirm(sub.id)
        n = svc.settings.newsletter
        message = confirmation_message(
            svc.settings,
            to_email=sub.email,
            to_name=sub.name,
            confirm_url=f"{n.base_url.rstrip('/')}/confirm/{token}",
            signer=svc.signer,
        )
        result = svc.send_mail(
            Envelope(n.sender_address, sub.email, f"confirm/{sub.id}-{int(time.time())}"), message
        )
        if result.status != DeliveryStatus.SENT:
            # the same answer to the visitor; the operator sees the log line
            bp_logger().warning("confirmation mail to subscriber %s not accepted: %s", sub.id, result.reply)
    # The same answer whether the address was new, pending or active: nobody learns who subscribed.
    return _answer(200, CHECK_INBOX)


@bp.get("/confirm/<token>")
def confirm(token: str) -> Response | tuple[str, int]:
    svc = services()
    try:
        subscriber_id = svc.tokens.read_confirm(token)
    except BadToken as exc:
        return render_template("web/message.html.j2", title="Link not valid", message=str(exc)), 400
    sub = svc.store.confirm_subscriber(subscriber_id, now=svc.now())
    if sub is None:
        return render_template(
            "web/message.html.j2", title="Link not valid", message="This confirmation link is not valid."
        ), 400
    return make_response(
        render_template(
            "web/message.html.j2",
            title="You're subscribed",
            message=f"Thanks for confirming. {svc.settings.newsletter.name} will arrive every morning.",
        )
    )


def bp_logger() -> Any:
    from flask import current_app

    return current_app.logger

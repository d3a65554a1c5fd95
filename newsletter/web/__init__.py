"""The web app (`newsletter serve`): signup with double opt-in, confirm, one-click unsubscribe,
the reader's preference page, the archive and a health check. Flask app factory, one blueprint per concern."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, abort, current_app, request
from flask_wtf.csrf import CSRFProtect
from itsdangerous import BadData
from werkzeug.routing import IntegerConverter

from ..config import Settings, read_secret_key
from ..content.render import template_loader
from ..delivery.sending import envelope_sender
from ..delivery.signing import DkimSigner, signer_for
from ..delivery.tokens import Tokens
from ..delivery.transport import Envelope, SendResult, open_transport
from ..store import Store
from .background import BackgroundSends
from .confirmations import ConfirmationMailer
from .limits import SlidingWindow, login_window
from .proxies import TrustedProxies

__all__ = [
    "Services",
    "create_app",
    "pages_app",
    "services",
    "body_limit",
    "PUBLIC_BODY_LIMIT",
    "IMPORT_BODY_LIMIT",
]

PUBLIC_BODY_LIMIT = 64 * 1024  # a signup, an unsubscribe or a console form is a few hundred bytes
IMPORT_BODY_LIMIT = 50 * 1024 * 1024  # a subscriber CSV uploaded to the console: about a million lines
IMPORT_PATH = "/admin/subscribers/import"


@dataclass
class Services:
    """What the views use; tests hand in their own clock and mail sink."""

    settings: Settings
    store: Store
    tokens: Tokens
    send_mail: Callable[[Envelope, bytes], SendResult]
    now: Callable[[], datetime]
    signups_per_ip: SlidingWindow
    confirmations: ConfirmationMailer
    signer: DkimSigner | None = None
    login_failures: SlidingWindow = field(default_factory=login_window)
    background: BackgroundSends = field(default_factory=BackgroundSends)


def _send_with_configured_transport(settings: Settings) -> Callable[[Envelope, bytes], SendResult]:
    def send(envelope: Envelope, message: bytes) -> SendResult:
        transport = open_transport(settings)
        try:
            return transport.send(envelope, message)
        finally:
            transport.close()

    return send


class _Id(IntegerConverter):
    """A row id in a path: a number the database can hold, else 404 (never an overflow's 500)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(*args, **kwargs)


class _App(Flask):
    """Flask autoescapes only names ending .html/.htm/.xml/.svg; every template here ends .j2."""

    def select_jinja_autoescape(self, filename: str | None) -> bool:
        return filename is None or filename.endswith((".html.j2", ".html", ".htm", ".xml"))


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    send_mail: Callable[[Envelope, bytes], SendResult] | None = None,
    now: Callable[[], datetime] | None = None,
) -> Flask:
    app = pages_app(settings, secret_key=read_secret_key(settings))
    clock = now or (lambda: datetime.now(UTC))
    store = store or Store(settings.database_url)
    tokens = Tokens(app.config["SECRET_KEY"])
    mail = send_mail or _send_with_configured_transport(settings)
    signer = signer_for(settings)
    app.extensions["newsletter"] = Services(
        settings=settings,
        store=store,
        tokens=tokens,
        send_mail=mail,
        now=clock,
        signups_per_ip=SlidingWindow(settings.web.signups_per_ip_per_hour, 3600.0),
        confirmations=ConfirmationMailer(
            settings,
            store,
            tokens,
            mail,
            now=clock,
            signer=signer,
            mail_from=envelope_sender(settings, tokens),  # a bounce closes the address
        ),
        signer=signer,
    )
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.web.trusted_proxies)  # type: ignore[method-assign]
    return app


def pages_app(settings: Settings, *, secret_key: str) -> Flask:
    """The app's routes, forms, login and templates (the operator's folder first) without its
    services: `create_app` adds them, and `templates check` renders the pages with this alone."""
    from . import admin, archive, preferences, signup, unsubscribe

    app = _App(__name__, template_folder=None)
    app.jinja_loader = template_loader(settings.templates_path)  # autoescaped by name, like the package's
    app.config["SECRET_KEY"] = secret_key
    app.config.update(
        SESSION_COOKIE_NAME="newsletter_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.newsletter.base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        MAX_CONTENT_LENGTH=IMPORT_BODY_LIMIT,
    )
    app.url_map.converters["int"] = _Id
    app.before_request(_limit_body)
    csrf = CSRFProtect(app)
    # Forms posted from other sites by design: the embeddable signup form and RFC 8058 one-click
    # unsubscribes (a mail client's POST). Every /admin form carries a token. The preference page
    # is like the unsubscribe link: the signed token in its path is the key (no cookie to ride on),
    # and saving the same choices twice changes nothing.
    csrf.exempt(signup.bp)
    csrf.exempt(unsubscribe.bp)
    csrf.exempt(preferences.bp)
    admin.init_login(app)
    for blueprint in (signup.bp, unsubscribe.bp, preferences.bp, archive.bp, admin.bp):
        app.register_blueprint(blueprint)
    app.after_request(_security_headers)
    app.jinja_env.globals["newsletter"] = settings.newsletter
    return app


def body_limit(app: Flask, path: str, cookies: Mapping[str, str]) -> int:
    """The largest body a request may send: a form's, or a subscriber CSV's to the import with a
    live operator session's cookie. `newsletter serve` asks before it reads a body."""
    if path == IMPORT_PATH and _operator_cookie(app, cookies.get(app.config["SESSION_COOKIE_NAME"])):
        return IMPORT_BODY_LIMIT
    return PUBLIC_BODY_LIMIT


def _operator_cookie(app: Flask, cookie: str | None) -> bool:
    """Signed by this app, in date, and its session not ended (the console's own login rule)."""
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    if not cookie or serializer is None:
        return False
    try:  # the checks Flask makes when it opens the session
        session = serializer.loads(cookie, max_age=int(app.permanent_session_lifetime.total_seconds()))
    except BadData:
        return False
    user = session.get("_user_id") if isinstance(session, dict) else None
    store: Store = app.extensions["newsletter"].store
    return isinstance(user, str) and store.operator_in_session(user) is not None


def _limit_body() -> None:
    """A body over its route's limit is refused before anything reads it."""
    if body_limit(current_app, request.path, request.cookies) > PUBLIC_BODY_LIMIT:
        return  # the import's: MAX_CONTENT_LENGTH
    if (request.content_length or 0) > PUBLIC_BODY_LIMIT:
        abort(413)
    # a chunked body has no length: read one byte past the limit (kept for the form parser) to tell
    request.max_content_length = PUBLIC_BODY_LIMIT + 1
    if len(request.get_data(cache=True)) > PUBLIC_BODY_LIMIT:
        abort(413)


def services() -> Services:
    found: Any = current_app.extensions["newsletter"]
    return found  # type: ignore[no-any-return]


def _security_headers(response: Response) -> Response:
    # Issues carry inline styles (the email's own), so style-src allows them; nothing else inline.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' https: http: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # Unsubscribe and confirm links carry tokens: never hand them to another site in a Referer.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response

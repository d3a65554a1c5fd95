"""The operator console under /admin (SPEC section 6): login, dashboard, issues, subscribers.

Operators log in with a name and an Argon2id-hashed password (Flask-Login sessions, renewed at
login); every form carries a CSRF token (Flask-WTF); ten failed logins from one address within
fifteen minutes lock that address out (429). Nothing here counts rows in Python: the pages read
aggregates and indexed pages of the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, cast

import flask_login
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.wrappers import Response as BaseResponse

from ..content.render import render_web
from ..db import widths
from ..db.models import IssueStatus, Operator, SubscriberStatus
from ..delivery.sending import send, send_test_copy
from ..errors import NewsletterError
from ..issues.edits import (
    INTRO_LIMIT,
    STORY_ACTIONS,
    Action,
    BadEdit,
    Change,
    SendBegun,
    edit_issue,
    hold_issue,
)
from ..links import Links
from ..operators import password_matches, rehash_if_needed, session_id
from ..reports import DELIVERY_COLUMNS, complaint_warning
from ..schedule import schedule_summary
from ..subscribers.rules import (
    Choices,
    choice_counts,
    normalise_email,
)
from . import services
from .limits import LOGIN_FAILURES, LOGIN_WINDOW_SECONDS

__all__ = ["bp", "init_login", "LOGIN_FAILURES", "LOGIN_WINDOW_SECONDS"]

bp = Blueprint("admin", __name__, url_prefix="/admin")
log = logging.getLogger("newsletter.admin")

PAGE = 50


View = TypeVar("View", bound=Callable[..., Any])


def login_required(view: View) -> View:
    """flask_login.login_required, typed: no session, a redirect to the login page."""
    return cast(View, flask_login.login_required(view))


class OperatorUser(UserMixin):  # type: ignore[misc]  # flask_login is untyped
    """A logged-in operator; the session keeps `operators.session_id` (ended by a logout or a new
    password, wherever its cookie was copied)."""

    def __init__(self, operator: Operator) -> None:
        self.operator_id, self.name = operator.id, operator.name
        self.id = session_id(operator)


def init_login(app: Any) -> None:
    manager = LoginManager(app)
    manager.login_view = "admin.login"
    manager.login_message = "Log in to see the console."
    manager.session_protection = "strong"

    def load(session: str) -> OperatorUser | None:
        op = services().store.operator_in_session(session)
        return None if op is None else OperatorUser(op)

    manager.user_loader(load)


@bp.after_request
def _headers(response: Response) -> Response:
    # The console runs its own script (the charts) from /static; the issue preview is framed by it.
    framed = request.endpoint == "admin.issue_html"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
        if framed
        else "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN" if framed else "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


# -- logging in and out ---------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | BaseResponse | tuple[str, int] | tuple[str, int, dict[str, str]]:
    if request.method == "GET":
        return render_template("web/admin/login.html.j2")
    svc = services()
    client = request.remote_addr or "unknown"
    name = (request.form.get("username") or "").strip()[: widths.OPERATOR_NAME]
    password = request.form.get("password") or ""
    # counted before the (slow) check, by address and by name, so parallel tries can't slip past
    keys, started = [f"address:{client}", f"name:{name.lower()}"], time.monotonic()
    locked = svc.login_failures.take(keys, started)
    if locked is not None:
        log.warning(
            "admin login refused for %r from %s: %d failures within 15 minutes", name, client, LOGIN_FAILURES
        )
        retry = str(int(locked) + 1)
        return render_template("web/admin/login.html.j2", error=TOO_MANY), 429, {"Retry-After": retry}
    op = svc.store.operator(name=name) if name else None
    ok = password_matches(op.password_hash if op else None, password)  # the same work for any name
    if not ok or op is None:
        log.warning("admin login failed for %r from %s", name, client)
        return render_template(
            "web/admin/login.html.j2", error="That name and password do not match.", username=name
        )  # 200 with the form again (SPEC section 6)
    svc.login_failures.forgive(keys, started)
    rehash = rehash_if_needed(op.password_hash, password)
    svc.store.operator_logged_in(op.id, password_hash=rehash, now=svc.now())
    session.clear()  # a new session at login: nothing from before carries over (fixation)
    login_user(OperatorUser(op))
    log.info("admin login: %s from %s", op.name, client)
    return redirect(_console_path(request.args.get("next", "")) or url_for(".dashboard"))


def _console_path(target: str) -> str | None:
    """`next=` after a login, if it is a path in the console: printable ASCII only (no CR/LF to
    split the Location header, no backslash or tab a browser reads as another host)."""
    if not all("!" <= c <= "~" and c != "\\" for c in target):
        return None
    if target != "/admin" and not target.startswith("/admin/"):
        return None
    return target


TOO_MANY = "Too many failed logins from your address or for this name; try again in 15 minutes."


@bp.post("/logout")
@login_required
def logout() -> BaseResponse:
    services().store.end_operator_sessions(current_user.operator_id)  # copies of the cookie too
    logout_user()
    session.clear()
    return redirect(url_for(".login"))


# -- dashboard ------------------------------------------------------------------------------------


@bp.get("/")
@login_required
def dashboard() -> str:
    svc = services()
    now = svc.now()
    issues = svc.store.issue_counts(limit=30)
    tz = svc.settings.newsletter.tz
    today = now.astimezone(tz).date()
    growth = svc.store.subscriber_growth(days=[today - timedelta(days=n) for n in range(29, -1, -1)], tz=tz)
    charts = {
        "growth": {
            "labels": [d.isoformat() for d in growth],
            "series": {
                k: [day[k] for day in growth.values()]
                for k in ("new", "confirmed", "unsubscribed", "bounced")
            },
        },
        "issues": {
            "labels": [f"#{r.issue_id} {r.issue_date.isoformat()}" for r in reversed(issues)],
            "series": {
                "sent": [r.accepted for r in reversed(issues)],
                "bounced": [r.hard_bounced for r in reversed(issues)],
                "complained": [r.complained for r in reversed(issues)],
                "unsubscribed": [r.unsubscribed for r in reversed(issues)],
            },
        },
    }
    return render_template(
        "web/admin/dashboard.html.j2",
        schedule=schedule_summary(svc.settings, svc.store, now=now),
        issues=issues,
        subscribers=svc.store.subscriber_counts(),
        growth=growth,
        charts=charts,
        readers=choice_counts(
            (
                (t.sections, t.frequency, t.n)
                for t in svc.store.preference_tally(status=SubscriberStatus.ACTIVE)
            ),
            Choices.of(svc.settings),
        ),
    )


# -- one issue ------------------------------------------------------------------------------------


@bp.get("/issues/<int:issue_id>")
@login_required
def issue(issue_id: int) -> str:
    return _issue_page(issue_id)


def _issue_page(issue_id: int) -> str:
    svc = services()
    found = svc.store.get_issue(issue_id)
    counts = svc.store.issue_counts(issue_id)
    if found is None or not counts:
        abort(404)
    after = request.args.get("after", 0, type=row_id)
    problems = svc.store.problem_deliveries(issue_id, after=after, limit=PAGE)
    text = render_web(
        found.text,
        found.placeholder_key,
        svc.settings,
        for_html=False,
        unsubscribe_url=Links(svc.settings.newsletter.base_url).unsubscribe("(each reader's own link)"),
    )
    return render_template(
        "web/admin/issue.html.j2",
        issue=found,
        items=svc.store.issue_items(found),
        text=text,
        counts=counts[0],
        complaints=complaint_warning(counts[0]),
        states=DELIVERY_COLUMNS,
        problems=problems,
        next_after=problems[-1][0] if len(problems) == PAGE else None,
        sending=svc.background.running(issue_id),
        dropped=[[svc.store.stories_by_id(item).get(i) for i in item] for item in found.dropped or []],
        edits=svc.store.issue_edits(issue_id),
        editable=found.status is IssueStatus.BUILT,
        story_actions=STORY_ACTIONS,
        intro_limit=INTRO_LIMIT,
    )


# -- the editor's hour (SPEC 9) -----------------------------------------------------------------------


@bp.post("/issues/<int:issue_id>/stories")
@login_required
def edit_stories(issue_id: int) -> BaseResponse | tuple[str, int]:
    """Drop, restore, move up or down, make the lead; split a cluster, or merge another into it."""
    action = request.form.get("action", "")
    story = request.form.get("story", None, type=row_id)
    if action not in STORY_ACTIONS or story is None:
        return _refused(issue_id, "Choose a story of the issue and what to do with it.", 400)
    return _edit(issue_id, Change(Action(action), story, other=request.form.get("with", None, type=row_id)))


@bp.post("/issues/<int:issue_id>/edit")
@login_required
def edit_text(issue_id: int) -> BaseResponse | tuple[str, int]:
    """The subject and the intro, the editor's own text (escaped in the mail like a feed's)."""
    form = request.form
    return _edit(issue_id, Change(Action.EDIT, subject=form.get("subject", ""), intro=form.get("intro", "")))


@bp.post("/issues/<int:issue_id>/hold")
@login_required
def hold(issue_id: int) -> BaseResponse | tuple[str, int]:
    return _edit(issue_id, Action.HOLD)


@bp.post("/issues/<int:issue_id>/approve")
@login_required
def approve(issue_id: int) -> BaseResponse | tuple[str, int]:
    return _edit(issue_id, Action.APPROVE)


@bp.post("/issues/<int:issue_id>/send")
@login_required
def send_now(issue_id: int) -> BaseResponse | tuple[str, int]:
    """Approve the issue and send it at once, from this process."""
    answer = _edit(issue_id, Action.SEND)
    if not isinstance(answer, tuple):
        flash(f"Issue {issue_id} is approved; " + _send_in_background(issue_id))
    return answer


def _edit(issue_id: int, change: Change | Action) -> BaseResponse | tuple[str, int]:
    """One edit (or a hold, an approval) as the operator logged in; 409 once the send has begun
    (nothing changed), 400 for an edit the issue cannot take."""
    svc = services()
    _issue_or_404(issue_id)
    who, now = current_user.name, svc.now()
    try:
        if isinstance(change, Change):
            edit_issue(svc.settings, svc.store, issue_id, change, who=who, now=now)
        else:
            hold_issue(svc.store, issue_id, change, who=who, now=now)
    except SendBegun as exc:
        return _refused(issue_id, str(exc), 409)
    except BadEdit as exc:
        return _refused(issue_id, str(exc), 400)
    action = change.action if isinstance(change, Change) else change
    log.info("admin %s edited issue %s: %s", who, issue_id, action)
    return redirect(url_for(".issue", issue_id=issue_id), code=303)


def _refused(issue_id: int, message: str, status: int) -> tuple[str, int]:
    flash(message, "error")
    return _issue_page(issue_id), status


@bp.get("/issues/<int:issue_id>/html")
@login_required
def issue_html(issue_id: int) -> Response:
    svc = services()
    found = svc.store.get_issue(issue_id)
    if found is None:
        abort(404)
    return Response(render_web(found.html, found.placeholder_key, svc.settings), mimetype="text/html")


@bp.post("/issues/<int:issue_id>/pause")
@login_required
def pause(issue_id: int) -> BaseResponse:
    svc = services()
    _issue_or_404(issue_id)
    svc.store.set_paused(issue_id, True)
    log.info("admin %s paused issue %s", current_user.name, issue_id)
    flash(f"Issue {issue_id} is paused: senders stop claiming within a second and record what is in flight.")
    return redirect(url_for(".issue", issue_id=issue_id))


@bp.post("/issues/<int:issue_id>/resume")
@login_required
def resume(issue_id: int) -> BaseResponse:
    svc = services()
    found = _issue_or_404(issue_id)
    svc.store.set_paused(issue_id, False)
    log.info("admin %s resumed issue %s", current_user.name, issue_id)
    flash(f"Issue {issue_id} resumed; " + _send_in_background(found.id))
    return redirect(url_for(".issue", issue_id=issue_id))


@bp.post("/issues/<int:issue_id>/resend-unknown")
@login_required
def resend_unknown(issue_id: int) -> BaseResponse:
    svc = services()
    _issue_or_404(issue_id)
    n = svc.store.requeue_unknown(issue_id)
    log.info("admin %s requeued %d unknown deliveries of issue %s", current_user.name, n, issue_id)
    flash(f"{n} messages of unknown fate will be sent again; " + _send_in_background(issue_id))
    return redirect(url_for(".issue", issue_id=issue_id))


@bp.post("/issues/<int:issue_id>/test")
@login_required
def send_test(issue_id: int) -> BaseResponse:
    svc = services()
    found = _issue_or_404(issue_id)
    try:
        address = normalise_email(request.form.get("email") or "")
        send_test_copy(svc.settings, svc.store, found, address)
        flash(f"A [Test] copy of issue {issue_id} went to {address}.")
    except NewsletterError as exc:
        flash(f"No test copy sent: {exc}", "error")
    return redirect(url_for(".issue", issue_id=issue_id))


def _issue_or_404(issue_id: int) -> Any:
    found = services().store.get_issue(issue_id)
    if found is None:
        abort(404)
    return found


def _send_in_background(issue_id: int) -> str:
    """Continue a send from this process (waitress keeps serving); one per issue at a time. It
    stops, with what is in flight recorded, when the server stops."""
    svc = services()

    def run(should_stop: Callable[[], bool]) -> None:
        try:
            found = svc.store.get_issue(issue_id)
            if found is not None:
                report = send(svc.settings, svc.store, found, should_stop=should_stop)
                log.info("console send of issue %s: %s", issue_id, report.counts)
        except NewsletterError as exc:
            log.warning("console send of issue %s stopped: %s", issue_id, exc)

    if not svc.background.start(issue_id, run):
        return "a send of it is already running here (or the server is stopping)."
    return "its send continues now."


# -- bounce mail to review ------------------------------------------------------------------------


@bp.get("/bounces")
@login_required
def bounces() -> str:
    """Bounce mail that changed nobody: reports no signed token attributes (anybody can write to the
    bounce address), mail not understood, mail that could not be handled."""
    before = request.args.get("before", None, type=row_id)
    mails = services().store.bounce_mails_for_review(before=before, limit=PAGE)
    return render_template(
        "web/admin/bounces.html.j2",
        mails=mails,
        next_before=mails[-1][0].id if len(mails) == PAGE else None,
    )


# -- subscribers ----------------------------------------------------------------------------------


def row_id(value: str) -> int:
    """A row id from a query string: a number the database can hold (else the default is used)."""
    number = int(value)
    if not 0 <= number < 2**31:
        raise ValueError(value)
    return number


def _local(url: str | None) -> bool:
    return bool(url) and "/admin/" in (url or "") and (url or "").startswith(request.host_url)


# The subscribers pages register their routes on `bp` as they are imported.
from . import admin_subscribers  # noqa: E402, F401

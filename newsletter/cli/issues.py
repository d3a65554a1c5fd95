"""`init`, `gather`, `build`, `pause`, `resume`, `hold`, `approve` and `preview`: the issue before
it is sent."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import click

from ..config import ensure_secret_key
from ..db.models import Story
from ..errors import NewsletterError
from ..issues.build import BuildOutcome
from ..private import open_private, private_folder
from . import (
    App,
    _build,
    _checked,
    _gather,
    _issue,
    _issue_date,
    _now,
    _print_json,
    _send,
    _sending_issue,
    main,
    out,
    pass_app,
)
from .templates import require_templates

# -- init ---------------------------------------------------------------------------------------


@main.command()
@pass_app
def init(app: App) -> None:
    """Create or migrate the database; create the secret key file if missing."""
    revision = app.store.migrate()
    created = ensure_secret_key(app.settings)
    out.print(f"database ready at revision {revision} ({_safe_url(app.settings.database_url)})", markup=False)
    if created:
        out.print(f"created the secret key file {app.settings.secret_key_path}", markup=False)


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return url


# -- gather, build, preview ---------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def gather(app: App, as_json: bool) -> None:
    """Fetch every source and store new stories."""
    report = _gather(app, quiet=as_json)
    if as_json:
        _print_json(
            {
                "new_stories": report.new_stories,
                "sources": [
                    {
                        "name": r.source.name,
                        "url": r.source.url,
                        "ok": r.ok,
                        "error": r.error,
                        "stories": len(r.stories),
                        "not_modified": r.not_modified,
                    }
                    for r in report.results
                ],
            }
        )
    if report.results and len(report.failed) == len(report.results):
        raise NewsletterError("no source could be read")


@main.command()
@click.option("--date", "date_text", metavar="YYYY-MM-DD", help="the issue's date (default: today)")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def build(app: App, date_text: str | None, as_json: bool) -> None:
    """Gather, choose the day's stories and store the rendered issue (one per date and edition;
    on the weekly day the weekly edition too)."""
    require_templates(app)
    outcomes = _build(app, _issue_date(app, date_text), quiet=as_json)
    if as_json:
        shown = [_outcome_json(app, o) for o in outcomes]
        # the daily issue's keys at the top, as before editions; every edition's in "issues"
        _print_json(shown[0] | {"issues": shown})
        return
    for outcome in outcomes:
        out.print(outcome.reason, markup=False)
        if outcome.issue is not None:
            out.print(f"issue {outcome.issue.id}: {outcome.issue.subject}", markup=False)


def _outcome_json(app: App, outcome: BuildOutcome) -> dict[str, Any]:
    issue = outcome.issue
    shown: dict[str, Any] | None = None
    items: list[dict[str, Any]] = []
    variants = 0
    if issue is not None:
        shown = dict(
            id=issue.id,
            date=issue.issue_date,
            edition=issue.edition.value,
            subject=issue.subject,
            stories=issue.story_count,
        )
        items = [_item_json(item) for item in app.store.issue_items(issue)]
        variants = 1 + len(app.store.issue_variants(issue.id))
    return {
        "issue": shown,
        "edition": outcome.edition.value,
        "created": outcome.created,
        "message": outcome.reason,
        "variants": variants,
        "items": items,
    }


def _item_json(item: list[Story]) -> dict[str, Any]:
    """One item of an issue as `build --json` prints it: the story shown, and the others in `also`."""
    face, *others = item

    def story(s: Story) -> dict[str, Any]:
        return {"id": s.id, "title": s.title, "link": s.link, "source": s.source}

    return story(face) | {"section": face.section, "also": [story(o) for o in others]}


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: the one being sent, else today's)")
@pass_app
def pause(app: App, issue_id: int | None) -> None:
    """Pause an issue's send: senders stop claiming, record what is in flight, and end."""
    issue = _sending_issue(app, issue_id)
    if issue.status == "sent":
        raise NewsletterError(f"issue {issue.id} is already sent; there is nothing to pause")
    changed = app.store.set_paused(issue.id, True)
    out.print(
        f"issue {issue.id} {'paused' if changed else 'was already paused'}; a running send stops within a "
        f"second, after recording what is in flight; 'newsletter resume --issue {issue.id}' continues",
        markup=False,
    )


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: the one being sent, else today's)")
@click.option("--no-send", is_flag=True, help="only lift the pause (a scheduler or a later send continues)")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def resume(app: App, issue_id: int | None, no_send: bool, as_json: bool) -> None:
    """Lift an issue's pause and continue its send (nothing is sent twice)."""
    issue = _sending_issue(app, issue_id)
    app.store.set_paused(issue.id, False)
    if no_send:
        out.print(f"issue {issue.id} resumed; the scheduler or 'newsletter send' continues it", markup=False)
        return
    _send(app, [issue], resend_unknown=False, as_json=as_json)


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: today's)")
@pass_app
def hold(app: App, issue_id: int | None) -> None:
    """Hold a built issue: the scheduler and `run` do not send it until it is approved."""
    _hold_or_approve(app, issue_id, held=True)


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: today's)")
@pass_app
def approve(app: App, issue_id: int | None) -> None:
    """Approve a built issue: it goes out at the scheduled time (or with `send` now)."""
    _hold_or_approve(app, issue_id, held=False)


def _hold_or_approve(app: App, issue_id: int | None, *, held: bool) -> None:
    from ..issues.edits import Action, hold_issue

    issue = _issue(app, issue_id, build_today=False)
    action = Action.HOLD if held else Action.APPROVE
    changed = hold_issue(app.store, issue.id, action, who=f"{getpass.getuser()} (command line)", now=_now())
    state = "held" if held else "approved"
    said = f"issue {issue.id} {'is now' if changed else 'was already'} {state}"
    out.print(
        said
        + (
            f"; the scheduler and 'run' do not send it until 'newsletter approve --issue {issue.id}'"
            if held
            else "; it goes out at the scheduled time, or now with 'newsletter send'"
        ),
        markup=False,
    )


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: today's, built if needed)")
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), help="write the HTML here (default: preview.html)"
)
@click.option("--to", "to_address", metavar="EMAIL", help="mail a test copy to this address instead")
@pass_app
def preview(app: App, issue_id: int | None, out_file: Path | None, to_address: str | None) -> None:
    """Write the inlined HTML of an issue for a browser, or mail a [Test] copy."""
    require_templates(app)
    issue = _issue(app, issue_id, build_today=True)
    if to_address:
        address, _ = _checked(to_address, None)
        from ..delivery.sending import send_test_copy

        send_test_copy(app.settings, app.store, issue, address)
        out.print(f"sent a test copy of issue {issue.id} to {address}", markup=False)
        return
    path = out_file or Path("preview.html")
    private_folder(path.parent)
    from ..content.render import render_web

    html = render_web(issue.html, issue.placeholder_key, app.settings)
    with open_private(path, "w", encoding="utf-8") as f:
        f.write(html)
    out.print(f"wrote the preview of issue {issue.id} to {path.resolve()}", markup=False)

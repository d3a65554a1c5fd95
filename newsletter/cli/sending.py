"""`send`, `run` and `status`: the issue on its way, and what became of it."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ..db.models import DeliveryStatus
from ..errors import NotFoundError
from ..reports import complaint_warning, engagement
from . import App, _build, _held, _issue, _issue_date, _now, _print_json, _send, err, main, out, pass_app
from .templates import require_templates

# -- send, run, status --------------------------------------------------------------------------


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: today's)")
@click.option("--wait", is_flag=True, help="wait for another sender of the same issue to finish")
@click.option("--resend-unknown", is_flag=True, help="also resend messages whose fate a crash left unknown")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def send(app: App, issue_id: int | None, wait: bool, resend_unknown: bool, as_json: bool) -> None:
    """Deliver an issue to every active subscriber who has not had it (resumes, never repeats);
    without --issue, today's (the daily, then the weekly on its day)."""
    issue = _issue(app, issue_id, build_today=False)
    issues = [issue]
    if issue_id is None and app.settings.digest.weekly:  # the weekly edition only while there is one
        issues += app.store.issues_of_date(issue.issue_date)[1:]
    _send(app, issues, resend_unknown=resend_unknown, as_json=as_json, wait=wait)


@main.command()
@click.option("--date", "date_text", metavar="YYYY-MM-DD", help="the issue's date (default: today)")
@pass_app
def run(app: App, date_text: str | None) -> None:
    """The main job once: build the day's issue (and on the weekly day the weekly one), then send it."""
    require_templates(app)
    outcomes = _build(app, _issue_date(app, date_text))
    for outcome in outcomes:
        out.print(outcome.reason, markup=False)
    built = []
    for outcome in outcomes:
        if outcome.issue is None:
            continue
        if held := _held(app, outcome.issue.id):
            out.print(held, markup=False)
            continue
        built.append(outcome.issue)
    if built:
        _send(app, built, resend_unknown=False, as_json=False, held_ok=False)


@main.command()
@click.option("--issue", "issue_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status(app: App, issue_id: int | None, as_json: bool) -> None:
    """Issues with their deliveries counted by state."""
    rows = app.store.issue_counts(issue_id)
    if issue_id is not None and not rows:
        raise NotFoundError(f"there is no issue {issue_id}")
    if as_json:
        _print_json(
            {
                "issues": [
                    {
                        "id": r.issue_id,
                        "date": r.issue_date,
                        "edition": r.edition,
                        "variants": r.variants + 1,
                        "subject": r.subject,
                        "status": r.status,
                        "paused": r.paused,
                        "held": r.held,
                        "stories": r.story_count,
                        "created_at": r.created_at,
                        "sent_at": r.sent_at,
                        "deliveries": r.deliveries,
                        "engagement": engagement(r),
                    }
                    for r in rows
                ],
                "subscribers": app.store.subscriber_counts(),
                "schedule": _schedule_info(app),
            }
        )
        return
    info = _schedule_info(app)
    last = info["last_run"]
    out.print(f"next scheduled run: {info['next_run']} ({info['cron']} in {info['timezone']})", markup=False)
    if last:
        out.print(f"last run: {last['scheduled_for']}: {last['outcome'] or last['state']}", markup=False)
    if not rows:
        out.print("no issues yet", markup=False)
        return
    table = Table()
    for name in ("id", "date", "status"):
        table.add_column(name, no_wrap=True, min_width=len(name))
    table.add_column("subject", overflow="ellipsis", no_wrap=True, max_width=40)
    for state in _SHOWN:
        table.add_column(state.value, justify="right", no_wrap=True, min_width=len(state.value))
    for r in rows:
        table.add_row(
            str(r.issue_id),
            r.issue_date.isoformat() + ("" if r.edition == "daily" else f" {r.edition}"),
            f"{r.status} (paused)" if r.paused else f"{r.status} (held)" if r.held else r.status,
            r.subject,
            *(str(r.deliveries.get(s.value, 0)) for s in _SHOWN),
        )
    out.print(table)
    reached = [r for r in rows if r.accepted or r.hard_bounced]
    if reached:
        rates = Table(title="deliverability (rates of the messages accepted; bounces of those answered)")
        rates.add_column("id", no_wrap=True)
        for name in ("accepted", "hard bounced", "soft bounced", "complained", "unsubscribed"):
            rates.add_column(name, justify="right", no_wrap=True)
        for r in reached:
            rates.add_row(
                str(r.issue_id),
                str(r.accepted),
                f"{r.hard_bounced} ({r.rate(r.hard_bounced, of_reached=True):.2%})",
                f"{r.soft_bounced} ({r.rate(r.soft_bounced):.2%})",
                f"{r.complained} ({r.rate(r.complained):.2%})",
                f"{r.unsubscribed} ({r.rate(r.unsubscribed):.2%})",
            )
        out.print(rates)
    for r in reached:
        if warning := complaint_warning(r):
            err.print(f"warning: {warning}", markup=False)
    unknown = sum(r.deliveries.get("unknown", 0) for r in rows)
    if unknown:
        err.print(
            f"{unknown} messages have an unknown fate (in flight when a sender stopped, or their reply was "
            f"lost); 'send --resend-unknown' sends them again",
            markup=False,
        )


def _schedule_info(app: App) -> dict[str, Any]:
    from ..schedule import schedule_summary

    return schedule_summary(app.settings, app.store, now=_now())


_SHOWN = (
    DeliveryStatus.SENT,
    DeliveryStatus.PENDING,
    DeliveryStatus.FAILED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.UNKNOWN,
)

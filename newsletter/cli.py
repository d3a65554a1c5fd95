"""The `newsletter` command (SPEC section 3). Every failure is one sentence and an exit code."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import jobs, operators
from .config import Settings, ensure_secret_key, find_config_path, load_settings
from .db.models import DeliveryStatus, Issue, SubscriberStatus
from .errors import ConfigError, NewsletterError, NotFoundError
from .private import open_private, private_folder
from .render import render_web
from .reports import complaint_warning, engagement
from .store import Store
from .subscribers import check_name, import_csv, normalise_email, write_csv

# Piped into a log or a cron mail, tables get room rather than the 80 columns of no terminal.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


def _now() -> datetime:
    return datetime.now(UTC)


class App:
    """What the commands share: the settings, loaded once, and the store, opened once."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = find_config_path(config_path)
        self._settings: Settings | None = None
        self._store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.database_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class _Group(click.Group):
    """Turns every NewsletterError into one plain sentence and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug or an unforeseen system error: still one sentence
            if os.environ.get("NEWSLETTER_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (set NEWSLETTER_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    sys.exit(code)


pass_app = click.make_pass_decorator(App)


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="config.toml (default: $NEWSLETTER_CONFIG, else ./config.toml)",
)
@click.version_option(package_name="newsletter")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """A self-hosted daily digest newsletter."""
    app = App(config_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _log(message: str) -> None:
    err.print(f"{datetime.now().astimezone():%H:%M:%S} {message}", markup=False)


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


# -- subscribers --------------------------------------------------------------------------------


@main.group()
def subscribers() -> None:
    """Add, import, export, list and remove subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default=None, help="the subscriber's name")
@pass_app
def subscribers_add(app: App, email: str, name: str | None) -> None:
    """Add an active subscriber (no confirmation mail)."""
    address, clean_name = _checked(email, name)
    sub, created = app.store.add_subscriber(address, clean_name, now=_now(), source="cli")
    out.print(f"{'added' if created else 'already present'}: {sub.email} ({sub.status})", markup=False)


def _checked(email: str, name: str | None) -> tuple[str, str | None]:
    try:
        return normalise_email(email), check_name(name)
    except NewsletterError as exc:
        raise ConfigError(str(exc)) from None


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@pass_app
def subscribers_import(app: App, file: Path) -> None:
    """Import a CSV file with an `email` column and an optional `name` column."""
    report = import_csv(file, app.store, now=_now())
    for line, reason in report.bad:
        err.print(f"{file}:{line}: skipped: {reason}", markup=False)
    out.print(
        f"imported {report.added} new, {report.existing} already present, "
        f"{report.duplicates} repeated in the file, {len(report.bad)} bad rows skipped",
        markup=False,
    )


@subscribers.command("export")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@pass_app
def subscribers_export(app: App, file: Path | None) -> None:
    """Write every subscriber with status and dates as CSV (to FILE, or standard output)."""
    if file is None:
        write_csv(app.store.iter_subscribers(), sys.stdout)
        return
    private_folder(file.parent)
    with open_private(file, "w", newline="", encoding="utf-8") as handle:
        n = write_csv(app.store.iter_subscribers(), handle)
    out.print(f"exported {n} subscribers to {file}", markup=False)


@subscribers.command("list")
@click.option("--status", type=click.Choice([s.value for s in SubscriberStatus]))
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
@pass_app
def subscribers_list(app: App, status: str | None, as_json: bool) -> None:
    """List subscribers, optionally of one status."""
    rows = app.store.iter_subscribers(status=status)
    if as_json:
        _print_json(
            {
                "subscribers": [
                    {
                        "email": s.email,
                        "name": s.name,
                        "status": s.status,
                        "created_at": s.created_at,
                        "confirmed_at": s.confirmed_at,
                        "unsubscribed_at": s.unsubscribed_at,
                    }
                    for s in rows
                ]
            }
        )
        return
    table = Table("email", "name", "status", "since")
    for s in rows:
        table.add_row(s.email, s.name or "", s.status, f"{s.created_at:%Y-%m-%d}")
    out.print(table)


@subscribers.command("remove")
@click.argument("email")
@pass_app
def subscribers_remove(app: App, email: str) -> None:
    """Unsubscribe an address (the row is kept, for the record)."""
    address, _ = _checked(email, None)
    sub = app.store.get_subscriber(address)
    if sub is None:
        raise NotFoundError(f"no subscriber {address}")
    changed = app.store.unsubscribe(sub.id, now=_now())
    out.print(f"{'unsubscribed' if changed else 'already unsubscribed'}: {address}", markup=False)


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


def _gather(app: App, *, quiet: bool = False) -> jobs.GatherReport:
    with _progress("gathering feeds", total=len(app.settings.sources), quiet=quiet) as tick:
        report = jobs.gather(app.settings, app.store, now=_now(), on_done=lambda _result: tick())
    _say_gathered(report, quiet=quiet)
    return report


def _say_gathered(report: jobs.GatherReport, *, quiet: bool) -> None:
    for r in report.results:
        if r.error:
            err.print(f"source '{r.source.name}' ({r.source.url}) failed: {r.error}", markup=False)
    if not quiet:
        ok = len(report.results) - len(report.failed)
        out.print(
            f"gathered {ok} of {len(report.results)} sources: {report.new_stories} new stories", markup=False
        )


def _issue_date(app: App, value: str | None) -> date:
    if value is None:
        return jobs.today(app.settings, _now())
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--date must be YYYY-MM-DD, not {value!r}") from None


def _build(app: App, issue_date: date, *, quiet: bool = False) -> jobs.BuildOutcome:
    with _progress("gathering feeds", total=len(app.settings.sources), quiet=quiet) as tick:
        report, outcome = jobs.gather_and_build(
            app.settings, app.store, issue_date=issue_date, now=_now(), on_done=lambda _result: tick()
        )
    if report is not None:
        _say_gathered(report, quiet=quiet)
        if report.results and len(report.failed) == len(report.results):
            err.print("no source could be read; building from the stories already stored", markup=False)
    return outcome


@main.command()
@click.option("--date", "date_text", metavar="YYYY-MM-DD", help="the issue's date (default: today)")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def build(app: App, date_text: str | None, as_json: bool) -> None:
    """Gather, choose the day's stories and store the rendered issue (one per date)."""
    outcome = _build(app, _issue_date(app, date_text), quiet=as_json)
    if as_json:
        issue = outcome.issue
        _print_json(
            {
                "issue": None
                if issue is None
                else {
                    "id": issue.id,
                    "date": issue.issue_date,
                    "subject": issue.subject,
                    "stories": issue.story_count,
                },
                "created": outcome.created,
                "message": outcome.reason,
            }
        )
        return
    out.print(outcome.reason, markup=False)
    if outcome.issue is not None:
        out.print(f"issue {outcome.issue.id}: {outcome.issue.subject}", markup=False)


def _issue(app: App, issue_id: int | None, *, build_today: bool) -> Issue:
    if issue_id is not None:
        issue = app.store.get_issue(issue_id)
        if issue is None:
            raise NotFoundError(f"there is no issue {issue_id}")
        return issue
    today = jobs.today(app.settings, _now())
    issue = app.store.issue_for_date(today)
    if issue is None and build_today:
        issue = _build(app, today).issue
    if issue is None:
        raise NotFoundError(f"there is no issue for today ({today}); too few new stories to build one")
    return issue


def _sending_issue(app: App, issue_id: int | None) -> Issue:
    """The issue named, else the one being sent, else today's."""
    if issue_id is None:
        sending = [r for r in app.store.issue_counts(limit=30) if r.status == "sending"]
        if sending:
            issue_id = sending[0].issue_id
    return _issue(app, issue_id, build_today=False)


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
    _send(app, issue, resend_unknown=False, as_json=as_json)


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: today's, built if needed)")
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), help="write the HTML here (default: preview.html)"
)
@click.option("--to", "to_address", metavar="EMAIL", help="mail a test copy to this address instead")
@pass_app
def preview(app: App, issue_id: int | None, out_file: Path | None, to_address: str | None) -> None:
    """Write the inlined HTML of an issue for a browser, or mail a [Test] copy."""
    issue = _issue(app, issue_id, build_today=True)
    if to_address:
        address, _ = _checked(to_address, None)
        jobs.send_test_copy(app.settings, app.store, issue, address)
        out.print(f"sent a test copy of issue {issue.id} to {address}", markup=False)
        return
    path = out_file or Path("preview.html")
    private_folder(path.parent)
    html = render_web(issue.html, app.settings)
    with open_private(path, "w", encoding="utf-8") as f:
        f.write(html)
    out.print(f"wrote the preview of issue {issue.id} to {path.resolve()}", markup=False)


# -- send, run, status --------------------------------------------------------------------------


@main.command()
@click.option("--issue", "issue_id", type=int, help="an issue id (default: today's)")
@click.option("--wait", is_flag=True, help="wait for another sender of the same issue to finish")
@click.option("--resend-unknown", is_flag=True, help="also resend messages whose fate a crash left unknown")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def send(app: App, issue_id: int | None, wait: bool, resend_unknown: bool, as_json: bool) -> None:
    """Deliver an issue to every active subscriber who has not had it (resumes, never repeats)."""
    issue = _issue(app, issue_id, build_today=False)
    _send(app, issue, resend_unknown=resend_unknown, as_json=as_json, wait=wait)


def _send(app: App, issue: Issue, *, resend_unknown: bool, as_json: bool, wait: bool = False) -> None:
    active = app.store.subscriber_counts().get(SubscriberStatus.ACTIVE.value, 0)
    options = jobs.send_options(app.settings, wait_for_sender=wait)
    with _progress(f"sending issue {issue.id}", total=active, quiet=as_json) as tick, _stop_signals() as stop:
        report = jobs.send(
            app.settings,
            app.store,
            issue,
            resend_unknown=resend_unknown,
            options=options,
            on_result=tick,
            should_stop=stop.is_set,
        )
    counts = {k: v for k, v in app.store.issue_counts(issue.id)[0].deliveries.items() if v}  # final states
    if as_json:
        _print_json(
            {
                "issue": issue.id,
                "finished": report.finished,
                "stopped": report.stopped,
                "paused": report.paused,
                "seconds": round(report.seconds, 3),
                "unknown_found": report.unknown_found,
                "throttled": report.throttled,
                "this_run": report.counts,  # every attempt's outcome in this run
                "counts": counts,  # the deliveries' final states
            }
        )
    else:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        if not report.counts:
            parts = f"nothing to send ({parts})" if parts else "nothing to send"
        rate = f" ({report.sent / report.seconds:,.0f} msg/s)" if report.sent and report.seconds else ""
        out.print(f"issue {issue.id}: {parts} in {report.seconds:.1f} s{rate}", markup=False)
        if report.unknown_found:
            err.print(
                f"{report.unknown_found} messages were in flight when a sender stopped; their fate is "
                f"unknown (resend them with --resend-unknown)",
                markup=False,
            )
        lost = report.counts.get(DeliveryStatus.UNKNOWN.value, 0)
        if lost:
            err.print(
                f"{lost} messages lost their reply after the final dot: they may have been delivered, "
                f"so they are not resent unless you say so (send --resend-unknown)",
                markup=False,
            )
        if not report.finished and not report.stopped and not report.paused:
            out.print("some messages wait for a retry; run send again later to finish", markup=False)
    if report.paused:
        out.print(
            f"issue {issue.id} is paused: stopped claiming after {report.sent} messages, with what was in "
            f"flight recorded; 'newsletter resume --issue {issue.id}' continues",
            markup=False,
        )
        return
    if report.stopped:
        raise NewsletterError(
            f"stopped by a signal after {report.sent} messages; what was in flight is "
            f"recorded, and 'newsletter send --issue {issue.id}' finishes the rest"
        )


@contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """SIGTERM and the first Ctrl-C ask the send to stop claiming; a second Ctrl-C interrupts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        _log("stopping: finishing the messages in flight, then recording them")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _progress(label: str, *, total: int, quiet: bool) -> Iterator[Callable[..., None]]:
    """A rich progress bar on a terminal; otherwise a plain log line every five seconds."""
    if quiet:
        yield lambda *_: None
        return
    if err.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(show_speed=True),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(label, total=total or None)
            yield lambda *_: bar.advance(task)
        return
    state = {"n": 0, "last": time.monotonic()}

    def tick(*_: object) -> None:
        state["n"] += 1
        now = time.monotonic()
        if now - state["last"] >= 5:
            state["last"] = now
            _log(f"{label}: {state['n']} of {total} handled")

    yield tick


@main.command()
@click.option("--date", "date_text", metavar="YYYY-MM-DD", help="the issue's date (default: today)")
@pass_app
def run(app: App, date_text: str | None) -> None:
    """The main job once: build the day's issue, then send it."""
    outcome = _build(app, _issue_date(app, date_text))
    out.print(outcome.reason, markup=False)
    if outcome.issue is None:
        return
    _send(app, outcome.issue, resend_unknown=False, as_json=False)


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
                        "subject": r.subject,
                        "status": r.status,
                        "paused": r.paused,
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
            r.issue_date.isoformat(),
            f"{r.status} (paused)" if r.paused else r.status,
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
    from .schedule import schedule_summary

    return schedule_summary(app.settings, app.store, now=_now())


_SHOWN = (
    DeliveryStatus.SENT,
    DeliveryStatus.PENDING,
    DeliveryStatus.FAILED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.UNKNOWN,
)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
@pass_app
def bounces(app: App, as_json: bool) -> None:
    """Read the [bounces] mailbox once: bounces and complaints (ARF) acted on, each mail counted once."""
    from .bounces import process_bounces

    report = process_bounces(app.settings, app.store, now=_now())
    if as_json:
        _print_json(report.as_json())
        return
    kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(report.kinds.items())) or "nothing new"
    out.print(
        f"read {report.read} new mail{'s' * (report.read != 1)} ({kinds}); {report.already_read} read before",
        markup=False,
    )
    for line in report.changes:
        out.print(f"  {line}", markup=False)
    for line in report.unrecognised:
        err.print(f"not understood, left in the mailbox: {line}", markup=False)


@main.group()
def admin() -> None:
    """Operators of the console (/admin)."""


@admin.command("add-user")
@click.argument("name")
@pass_app
def add_user(app: App, name: str) -> None:
    """Add an operator, or set a new password for one (asked on the terminal, or one line of stdin)."""
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    added = operators.set_operator(app.store, name, password, now=_now())
    name = name.strip()
    out.print(
        f"{'added operator' if added else 'set a new password for'} {name}; log in at "
        f"{app.settings.newsletter.base_url.rstrip('/')}/admin/ (newsletter serve)",
        markup=False,
    )


@main.command("dkim-keygen")
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
@click.option("--force", is_flag=True, help="replace an existing key (mail signed with it stops verifying)")
@pass_app
def dkim_keygen(app: App, bits: int, force: bool) -> None:
    """Write the DKIM private key ([dkim] private_key_file) and print the DNS TXT record to publish."""
    from .config import DkimSettings
    from .delivery.signing import dns_record, write_key

    settings = app.settings
    d = settings.dkim or DkimSettings(
        domain=settings.newsletter.sender_address.rpartition("@")[2], selector="news"
    )
    path = settings.path(d.private_key_file)
    record = dns_record(write_key(path, bits=bits, replace=force))
    name = f"{d.selector}._domainkey.{d.domain}"
    # DNS strings hold 255 characters at most: a 2048-bit key's record is split into several
    strings = " ".join(f'"{record[i : i + 250]}"' for i in range(0, len(record), 250))
    out.print(
        f"wrote {path} (RSA {bits}, readable by its owner only; keep it out of version control)", markup=False
    )
    out.print(f"\nPublish this TXT record at {name}:\n\n{record}\n", markup=False)
    out.print(f"In a zone file:\n\n{name}. 3600 IN TXT ( {strings} )\n", markup=False)
    if settings.dkim is None:
        out.print(
            f'Then add to {app.config_path}:\n\n[dkim]\ndomain = "{d.domain}"\nselector = "{d.selector}"\n'
            f'private_key_file = "{d.private_key_file}"',
            markup=False,
        )


@main.command()
@click.option("--log-file", type=click.Path(path_type=Path), help="append log lines here (default: stderr)")
@click.option("--log-json", is_flag=True, help="one JSON object per log line, for log collectors")
@pass_app
def schedule(app: App, log_file: Path | None, log_json: bool) -> None:
    """Run the main job at every [schedule] cron time until stopped (SIGTERM or Ctrl-C)."""
    from .schedule import Scheduler

    configure_log(log_file, as_json=log_json)
    scheduler = Scheduler(app.settings, app.store)
    scheduler.install_signals()
    scheduler.start()
    logging.getLogger("newsletter.schedule").info("stopped", extra={"fields": {"event": "stopped"}})


def configure_log(log_file: Path | None, *, as_json: bool) -> logging.Handler:
    """One log for everything the scheduler's process says: the newsletter's own lines (the
    scheduler, the engine, the bounce reader) and APScheduler's warnings and errors."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(_JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(message)s"))
    for name, level in (("newsletter", logging.INFO), ("apscheduler", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # not a second time through the root logger's last resort
    return handler


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "message": record.getMessage(),
                "logger": record.name,
                **({"traceback": self.formatException(record.exc_info)} if record.exc_info else {}),
                **fields,
            },
            default=str,
        )


@main.command()
@click.option("--host", help="address to listen on (default: [web] host)")
@click.option("--port", type=int, help="port to listen on (default: [web] port)")
@pass_app
def serve(app: App, host: str | None, port: int | None) -> None:
    """The web app: signup, confirm, one-click unsubscribe, archive (waitress)."""
    import waitress

    from .web import create_app

    web = create_app(app.settings, store=app.store)
    host, port = host or app.settings.web.host, port or app.settings.web.port
    server = waitress.create_server(web, host=host, port=port, threads=8, ident="newsletter")

    class Stopped(Exception):
        pass

    def stop(_signum: int, _frame: object) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
    _log(f"serving {app.settings.newsletter.name} on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        server.run()
    except (Stopped, KeyboardInterrupt):
        pass
    finally:
        server.close()
    services = web.extensions["newsletter"]
    # a console send stops as `send` does on SIGTERM: no more claims, what is in flight recorded
    for issue_id in services.background.stop(timeout=60):
        _log(f"stopped the console send of issue {issue_id}, with what was in flight recorded")
    # what the visitors were promised: the confirmation mails still waiting go out before the exit
    mailed = services.confirmations.wait_idle(timeout=10)
    _log("stopped" if mailed else "stopped; some confirmation mails were not sent")


if __name__ == "__main__":  # pragma: no cover
    main()

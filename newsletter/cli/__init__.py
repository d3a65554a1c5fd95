"""The `newsletter` command (SPEC section 3). Every failure is one sentence and an exit code.

The group and what its commands share are here; the commands are in `subscribers`, `issues`,
`sending` and `operations`."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, NoReturn

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

from ..config import Settings, find_config_path, load_settings
from ..db.models import DeliveryStatus, Edition, Issue, SubscriberStatus
from ..errors import NewsletterError, NotFoundError, UsageError
from ..issues.build import BuildOutcome, GatherReport, gather, gather_and_build, today
from ..store import Store
from ..subscribers.rules import InvalidSubscriber, check_name, normalise_email

if TYPE_CHECKING:
    from ..delivery.progress import SendReport

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
            if exc.__cause__ is not None and os.environ.get("NEWSLETTER_DEBUG"):
                raise  # what the database (or another library) raised, with its traceback
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


# -- shared by the command groups ----------------------------------------------------------


def _build(app: App, issue_date: date, *, quiet: bool = False) -> list[BuildOutcome]:
    """The date's issues, each edition's (the daily first): built now, built before, or none."""
    with _progress("gathering feeds", total=len(app.settings.sources), quiet=quiet) as tick:
        report, outcomes = gather_and_build(
            app.settings, app.store, issue_date=issue_date, now=_now(), on_done=lambda _result: tick()
        )
    if report is not None:
        _say_gathered(report, quiet=quiet)
        if report.results and len(report.failed) == len(report.results):
            err.print("no source could be read; building from the stories already stored", markup=False)
    return outcomes


def _checked(email: str, name: str | None) -> tuple[str, str | None]:
    try:
        return normalise_email(email), check_name(name)
    except InvalidSubscriber as exc:  # given on the command line
        raise UsageError(str(exc)) from None


def _gather(app: App, *, quiet: bool = False) -> GatherReport:
    with _progress("gathering feeds", total=len(app.settings.sources), quiet=quiet) as tick:
        report = gather(app.settings, app.store, now=_now(), on_done=lambda _result: tick())
    _say_gathered(report, quiet=quiet)
    return report


def _issue(app: App, issue_id: int | None, *, build_today: bool) -> Issue:
    if issue_id is not None:
        issue = app.store.get_issue(issue_id)
        if issue is None:
            raise NotFoundError(f"there is no issue {issue_id}")
        return issue
    day = today(app.settings, _now())
    issue = app.store.issue_for_date(day)
    if issue is None and build_today:
        issue = _build(app, day)[0].issue
    if issue is None:
        raise NotFoundError(f"there is no issue for today ({day}); too few new stories to build one")
    return issue


def _issue_date(app: App, value: str | None) -> date:
    if value is None:
        return today(app.settings, _now())
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--date must be YYYY-MM-DD, not {value!r}") from None


def _say_gathered(report: GatherReport, *, quiet: bool) -> None:
    for r in report.results:
        if r.error:
            err.print(f"source '{r.source.name}' ({r.source.url}) failed: {r.error}", markup=False)
    if not quiet:
        ok = len(report.results) - len(report.failed)
        out.print(
            f"gathered {ok} of {len(report.results)} sources: {report.new_stories} new stories", markup=False
        )


def _send(
    app: App,
    sent: Sequence[Issue],
    *,
    resend_unknown: bool,
    as_json: bool,
    wait: bool = False,
    held_ok: bool = True,
) -> None:
    """Send each issue in turn (a day's daily, then its weekly); a pause or a signal ends the
    sending there. `--json` prints one document: the first issue's keys at the top, as before
    editions, and every issue's under "issues"."""
    shown: list[dict[str, Any]] = []
    try:
        for issue in sent:
            report = _send_one(
                app,
                issue,
                resend_unknown=resend_unknown,
                as_json=as_json,
                wait=wait,
                shown=shown,
                held_ok=held_ok,
            )
            if report.paused:
                (err if as_json else out).print(
                    f"issue {issue.id} is paused: stopped claiming after {report.sent} messages, with what "
                    f"was in flight recorded; 'newsletter resume --issue {issue.id}' continues",
                    markup=False,
                )
                return
            if report.stopped:
                raise NewsletterError(
                    f"stopped by a signal after {report.sent} messages; what was in flight is "
                    f"recorded, and 'newsletter send --issue {issue.id}' finishes the rest"
                )
    finally:
        if as_json and shown:
            _print_json(shown[0] | {"issues": shown})


def _send_one(
    app: App,
    issue: Issue,
    *,
    resend_unknown: bool,
    as_json: bool,
    wait: bool,
    shown: list[dict[str, Any]],
    held_ok: bool = True,
) -> SendReport:
    from ..delivery.sending import send, send_options  # compose, DKIM, the engine: for sends alone

    active = app.store.subscriber_counts().get(SubscriberStatus.ACTIVE.value, 0)
    options = send_options(app.settings, wait_for_sender=wait)
    with _progress(f"sending issue {issue.id}", total=active, quiet=as_json) as tick, _stop_signals() as stop:
        report = send(
            app.settings,
            app.store,
            issue,
            resend_unknown=resend_unknown,
            options=options,
            on_result=tick,
            should_stop=stop.is_set,
            held_ok=held_ok,
        )
    counts = {k: v for k, v in app.store.issue_counts(issue.id)[0].deliveries.items() if v}  # final states
    shown.append(
        {
            "issue": issue.id,
            "finished": report.finished,
            "stopped": report.stopped,
            "paused": report.paused,
            "seconds": round(report.seconds, 3),
            "unknown_found": report.unknown_found,
            "throttled": report.throttled,
            "edition": issue.edition.value,
            "variants": report.variants,
            "this_run": report.counts,  # every attempt's outcome in this run
            "counts": counts,  # the deliveries' final states
        }
    )
    if as_json:
        return report
    parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if not report.counts:
        parts = f"nothing to send ({parts})" if parts else "nothing to send"
    rate = f" ({report.sent / report.seconds:,.0f} msg/s)" if report.sent and report.seconds else ""
    label = "" if issue.edition is Edition.DAILY else f" ({issue.edition})"
    out.print(f"issue {issue.id}{label}: {parts} in {report.seconds:.1f} s{rate}", markup=False)
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
    return report


def _held(app: App, issue_id: int) -> str:
    """What `run` says of an issue an editor holds ("" when it is not held)."""
    from ..issues.review import held_reason

    return held_reason(app.store, issue_id)


def _sending_issue(app: App, issue_id: int | None) -> Issue:
    """The issue named, else the one being sent, else today's."""
    if issue_id is None:
        sending = [r for r in app.store.issue_counts(limit=30) if r.status == "sending"]
        if sending:
            issue_id = sending[0].issue_id
    return _issue(app, issue_id, build_today=False)


# The command groups register their commands on `main` as they are imported.
from . import issues, operations, sending, subscribers, templates  # noqa: E402, F401

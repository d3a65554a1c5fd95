"""`newsletter schedule`: the main job at every `[schedule] cron` time, in `[newsletter] timezone`.

Each fire time is a row in `scheduled_runs`, claimed by the one scheduler that runs it, so two
schedulers (or a scheduler and a manual `run`) never build or send twice; the unique issue date
and the delivery engine's claims cover the rest. A fire time missed while no scheduler was up is
made up at start within `misfire_grace_seconds`, else skipped with a log line. A minute job
resumes issues whose send is unfinished (a crash, a stop, retries that came due)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from .bounces.processing import process_bounces
from .config import Settings, read_secret_key
from .db.models import Edition
from .delivery.engine import SendReport, process_alive
from .delivery.sending import send, send_options
from .delivery.tokens import Tokens
from .errors import ConfigError, NewsletterError
from .issues.build import gather_and_build
from .issues.review import SECOND_NOTE, held_reason, send_review_note, start_review
from .store import Store
from .subscribers.tidy import tidy

__all__ = [
    "MissedRun",
    "RunOutcome",
    "Scheduler",
    "fire_times",
    "latest_fire",
    "missed_run",
    "next_fire",
    "review_scheduled",
    "run_scheduled",
    "schedule_summary",
]

log = logging.getLogger("newsletter.schedule")


def trigger(cron: str, tz: ZoneInfo) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(cron, timezone=tz)
    except ValueError as exc:
        raise ConfigError(
            f"configuration key 'schedule.cron' is not a valid cron expression: {exc}"
        ) from None


def next_fire(when: CronTrigger, *, now: datetime) -> datetime | None:
    fire: datetime | None = when.get_next_fire_time(None, now)
    return fire


def fire_times(when: CronTrigger, *, after: datetime, until: datetime) -> list[datetime]:
    """Every fire time in (after, until], in order; a local time that the autumn change repeats
    fires once (APScheduler 3 would fire it in both offsets)."""
    t, tz = when, when.timezone
    times: list[datetime] = []
    previous = None
    probe = after + timedelta(microseconds=1)
    while True:
        fire = t.get_next_fire_time(previous, probe)
        if fire is None or fire > until:
            return times
        if not times or fire.replace(tzinfo=None) != times[-1].replace(tzinfo=None):
            times.append(fire)
        # step in UTC: wall-clock arithmetic on a zoneinfo time would step back across the change
        previous, probe = fire, (fire.astimezone(UTC) + timedelta(seconds=1)).astimezone(tz)


@dataclass(frozen=True)
class MissedRun:
    fire_time: datetime
    make_up: bool  # within the grace: run it now; else skip it and say so


def latest_fire(when: CronTrigger, *, until: datetime, lookback: timedelta) -> datetime | None:
    """The last fire time at or before `until`, looking back at most `lookback`: in a minute
    first, then an hour, then the whole lookback, so a trigger of seconds and one of days both
    cost a few steps."""
    span = min(timedelta(minutes=1), lookback)
    while True:
        times = fire_times(when, after=until - span, until=until)
        if times or span >= lookback:
            return times[-1] if times else None
        span = min(span * 60, lookback)


def missed_run(
    when: CronTrigger,
    *,
    now: datetime,
    grace: timedelta,
    already_run: Callable[[datetime], bool],
    lookback: timedelta = timedelta(days=2),
) -> MissedRun | None:
    """The latest fire time before `now` that nobody ran, if any."""
    latest = latest_fire(when, until=now, lookback=lookback)
    if latest is None or already_run(latest):
        return None
    return MissedRun(latest, make_up=now - latest <= grace)


@dataclass(frozen=True)
class RunOutcome:
    ran: bool
    issue_id: int | None
    fields: dict[str, Any]  # for structured logs; `line` is the same as key=value pairs

    @property
    def line(self) -> str:
        return fields_line(self.fields)


def fields_line(fields: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in fields.items()
    )


Emit = Callable[[str, dict[str, Any]], None]


def log_emit(message: str, fields: dict[str, Any]) -> None:
    """The scheduler's log line; the fields ride along for `--log-json`."""
    log.info(message, extra={"fields": fields})


def run_scheduled(
    settings: Settings,
    store: Store,
    fire_time: datetime,
    *,
    now: Callable[[], datetime],
    should_stop: Callable[[], bool] = lambda: False,
) -> RunOutcome:
    """The main job for one fire time: build the day's issue, then send it, once among all schedulers."""
    started = now()
    if not store.claim_scheduled_run(
        fire_time.astimezone(UTC), host=socket.gethostname(), pid=os.getpid(), now=started
    ):
        return RunOutcome(
            False, None, {"fire_time": fire_time.isoformat(), "skipped": "taken by another scheduler"}
        )
    issue_date = fire_time.astimezone(settings.newsletter.tz).date()
    fields: dict[str, Any] = {"date": issue_date.isoformat(), "issue": None}
    try:
        report, outcomes = gather_and_build(settings, store, issue_date=issue_date, now=started)
        if report is not None:
            fields["new_stories"] = report.new_stories
            if report.failed:
                fields["failed_feeds"] = ", ".join(r.source.name for r in report.failed)
        for outcome in outcomes:  # the daily issue's fields as ever; the weekly one's named so
            named = "" if outcome.edition is Edition.DAILY else f"{outcome.edition}_"
            if outcome.issue is None:
                fields[f"{named}reason"] = outcome.reason
                continue
            fields[f"{named}issue"] = outcome.issue.id
            store.attach_scheduled_issue(fire_time.astimezone(UTC), outcome.issue.id)
            if settings.schedule.review_minutes:  # built late (no scheduler was up): reviewed all the same
                start_review(settings, store, outcome.issue, send_at=fire_time, now=started)
            if held := held_reason(store, outcome.issue.id):
                fields[f"{named}held"] = held
                if settings.schedule.review_default == "hold" and store.claim_review_note(
                    outcome.issue.id, SECOND_NOTE
                ):
                    send_review_note(
                        settings, store, outcome.issue.id, send_at=fire_time, note=SECOND_NOTE, now=started
                    )
                continue
            sent = _send_fields(send(settings, store, outcome.issue, should_stop=should_stop, held_ok=False))
            fields |= {f"{named}{k}": v for k, v in ({"stories": outcome.issue.story_count} | sent).items()}
            if should_stop():
                break
    except NewsletterError as exc:
        fields["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a database or a bug: the run still ends, as failed
        log.exception("the run for %s failed", fire_time.isoformat())
        fields["error"] = f"unexpected {type(exc).__name__}: {exc}"[:500]
    fields["seconds"] = round((now() - started).total_seconds(), 1)
    result = RunOutcome(True, fields["issue"], fields)
    try:
        store.finish_scheduled_run(
            fire_time.astimezone(UTC), issue_id=result.issue_id, outcome=result.line, now=now()
        )
    except Exception as exc:  # noqa: BLE001 - the database is down: the line is still logged
        result.fields["error"] = f"{fields.get('error', '')}; the run was not recorded: {exc}".lstrip("; ")
    return result


def review_scheduled(
    settings: Settings, store: Store, fire_time: datetime, *, now: datetime
) -> dict[str, Any]:
    """`[schedule] review_minutes` before a fire time: build its issues and mail the editors the
    first note (once among all schedulers); the fire time itself sends them unless held."""
    issue_date = fire_time.astimezone(settings.newsletter.tz).date()
    fields: dict[str, Any] = {"date": issue_date.isoformat(), "send_at": fire_time.isoformat()}
    try:
        _, outcomes = gather_and_build(settings, store, issue_date=issue_date, now=now)
        for outcome in outcomes:
            named = "" if outcome.edition is Edition.DAILY else f"{outcome.edition}_"
            if outcome.issue is None:
                fields[f"{named}reason"] = outcome.reason
                continue
            fields[f"{named}issue"] = outcome.issue.id
            fields[f"{named}notes"] = start_review(settings, store, outcome.issue, send_at=fire_time, now=now)
    except NewsletterError as exc:
        fields["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a database or a bug: logged, tried again next minute
        log.exception("the review build for %s failed", fire_time.isoformat())
        fields["error"] = f"unexpected {type(exc).__name__}: {exc}"[:500]
    return fields


def _send_fields(report: SendReport) -> dict[str, Any]:
    c = report.counts
    return {
        "sent": c.get("sent", 0),
        "deferred": c.get("deferred", 0),
        "bounced": c.get("bounced", 0),
        "failed": c.get("failed", 0),
        "unknown": report.unknown_found,
        "finished": report.finished,
    }


class Scheduler:
    """APScheduler (3.x) running the main job; stops on SIGTERM/SIGINT after recording what is in flight."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        now: Callable[[], datetime] | None = None,
        emit: Emit = log_emit,
        when: CronTrigger | None = None,
    ) -> None:
        """`when` is `[schedule] cron` unless given (a test's trigger of seconds)."""
        self.settings, self.store, self.emit = settings, store, emit
        self.now = now or (lambda: datetime.now(UTC))
        self.stopping = threading.Event()
        self.tz = settings.newsletter.tz
        self.when = when or trigger(settings.schedule.cron, self.tz)
        self.lock = threading.Lock()  # one main job at a time in this process
        self.scheduler = BackgroundScheduler(timezone=self.tz)

    def run_once(self, fire_time: datetime) -> None:
        with self.lock:
            result = run_scheduled(
                self.settings, self.store, fire_time, now=self.now, should_stop=self.stopping.is_set
            )
        if result.ran:
            self.emit(f"run {result.line}", {"event": "run", **result.fields})
        else:
            self.emit(f"run for {fire_time.isoformat()} was taken by another scheduler", result.fields)

    def review_due(self) -> None:
        """`[schedule] review_minutes` before the next fire time: build and mail the editors."""
        minutes = self.settings.schedule.review_minutes
        if not minutes or self.stopping.is_set():
            return
        now = self.now()
        upcoming = next_fire(self.when, now=now)
        if upcoming is None or upcoming - now > timedelta(minutes=minutes):
            return
        with self.lock:
            fields = review_scheduled(self.settings, self.store, upcoming, now=now)
        if fields.get("notes") or fields.get("error"):
            self.emit(f"review {fields_line(fields)}", {"event": "review", **fields})

    def resume_unfinished(self) -> None:
        """Issues whose send began and did not end: resume them (retries due, a crash, a stop)."""
        if self.stopping.is_set() or not self.lock.acquire(blocking=False):
            return
        try:
            since = (self.now() - timedelta(days=2)).date()
            # what is due goes now; deferred rows wait for their time, without holding this job
            options = send_options(self.settings, wait_for_retries=False)
            # and issues a run found held, approved since: their send time has passed
            due = [*self.store.unfinished_issues(since=since), *self.store.approved_since_run(since=since)]
            for issue in due:
                started = self.now()
                try:
                    report = send(
                        self.settings, self.store, issue, options=options, should_stop=self.stopping.is_set
                    )
                except Exception as exc:  # noqa: BLE001 - one issue's trouble never stops the scheduler
                    if not isinstance(exc, NewsletterError):
                        log.exception("resuming issue %s failed", issue.id)
                    self.emit(
                        f"resume issue={issue.id} not now: {exc}",
                        {"event": "resume", "issue": issue.id, "error": str(exc)},
                    )
                    continue
                if not report.counts and not report.finished:
                    continue
                fields = {"issue": issue.id, **_send_fields(report)}
                fields["seconds"] = round((self.now() - started).total_seconds(), 1)
                line = fields_line(fields)
                self.emit(f"resume {line}", {"event": "resume", **fields})
                if report.finished:  # the run that began this send, cut short, ends here
                    self.store.finish_scheduled_runs_of_issue(
                        issue.id, outcome=f"date={issue.issue_date} resumed {line}", now=self.now()
                    )
        finally:
            self.lock.release()

    def check_bounces(self) -> None:
        """Read the bounce mailbox (`[bounces] check_every_minutes`); a failure is logged, not fatal."""
        if self.stopping.is_set():
            return
        started = self.now()
        try:
            report = process_bounces(self.settings, self.store, now=started)
        except Exception as exc:  # noqa: BLE001 - the mailbox or the database: logged, tried next time
            self.emit(f"bounces not read: {exc}", {"event": "bounces", "error": str(exc)})
            return
        fields: dict[str, Any] = {"read": report.read, **dict(sorted(report.kinds.items()))}
        fields["changes"] = len(report.changes)
        if report.read:
            self.emit(f"bounces {fields_line(fields)}", {"event": "bounces", **fields})
        for line in report.changes:
            self.emit(f"bounces: {line}", {"event": "bounce", "change": line})
        for line in report.unrecognised:
            self.emit(
                f"bounces: not understood, left in the mailbox: {line}",
                {"event": "bounce", "unrecognised": line},
            )

    def tidy_signups(self) -> None:
        """Every hour: remind pending signups once, delete those pending too long (SPEC 10)."""
        if self.stopping.is_set():
            return
        try:
            report = tidy(self.settings, self.store, Tokens(read_secret_key(self.settings)), now=self.now())
        except Exception as exc:  # noqa: BLE001 - the relay or the database: logged, tried next hour
            self.emit(f"tidy not done: {exc}", {"event": "tidy", "error": str(exc)})
            return
        fields = {k: v for k, v in report.as_dict().items() if k != "dry_run"}
        if report.reminded or report.pruned or report.not_sent:
            self.emit(f"tidy {fields_line(fields)}", {"event": "tidy", **fields})

    def start(self) -> None:
        s = self.settings.schedule
        grace = timedelta(seconds=s.misfire_grace_seconds)
        missed = missed_run(self.when, now=self.now(), grace=grace, already_run=self._already_run)
        if missed is not None and missed.make_up:
            self.emit(
                f"making up the run of {missed.fire_time.isoformat()} missed while no scheduler was up",
                {"event": "make_up", "fire_time": missed.fire_time.isoformat()},
            )
            self.run_once(missed.fire_time)
        elif (
            missed is not None and self.store.last_scheduled_run() is not None
        ):  # a first start misses nothing
            self.emit(
                f"skipping the run of {missed.fire_time.isoformat()}: missed by more than "
                f"misfire_grace_seconds={s.misfire_grace_seconds}",
                {"event": "skip", "fire_time": missed.fire_time.isoformat()},
            )
        if self.stopping.is_set():
            return
        self.resume_unfinished()
        self.scheduler.add_job(
            self._tick,
            self.when,
            id="main",
            misfire_grace_time=s.misfire_grace_seconds,
            coalesce=True,
            max_instances=1,
        )
        self.scheduler.add_job(
            self.resume_unfinished, "interval", minutes=1, id="resume", coalesce=True, max_instances=1
        )
        if s.review_minutes:
            self.review_due()
            self.scheduler.add_job(
                self.review_due, "interval", minutes=1, id="review", coalesce=True, max_instances=1
            )
        self.scheduler.add_job(
            self.tidy_signups,
            "interval",
            hours=1,
            id="tidy",
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(self.tz),
        )
        b = self.settings.bounces
        if b is not None and b.check_every_minutes > 0:
            self.scheduler.add_job(
                self.check_bounces,
                "interval",
                minutes=b.check_every_minutes,
                id="bounces",
                coalesce=True,
                max_instances=1,
                next_run_time=datetime.now(self.tz),
            )
        upcoming = next_fire(self.when, now=self.now())
        self.emit(
            f"scheduled {s.cron!r} in {self.settings.newsletter.timezone}; next run {upcoming}",
            {"event": "scheduled", "cron": s.cron, "next_run": upcoming.isoformat() if upcoming else None},
        )
        # The jobs run in APScheduler's threads; this one waits for a stop. A stop that comes at any
        # moment, even before the scheduler has started, ends the wait: none is lost in between.
        self.scheduler.start()
        try:
            while not self.stopping.wait(1):
                pass
        finally:  # a running send has seen `stopping`: it records what is in flight, then returns
            self.scheduler.shutdown(wait=True)

    def _tick(self) -> None:
        # the fire time this tick stands for: the latest one at or before now
        now = self.now()
        fire = latest_fire(self.when, until=now + timedelta(seconds=1), lookback=timedelta(days=1))
        self.run_once(fire or now)

    def _already_run(self, fire_time: datetime) -> bool:
        last = self.store.last_scheduled_run()
        return last is not None and last.scheduled_for >= fire_time.astimezone(UTC)

    def stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: stop scheduling; a running send stops claiming and records what is in flight."""
        self.stopping.set()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)


def schedule_summary(settings: Settings, store: Store, *, now: datetime) -> dict[str, Any]:
    """The next fire time and the last run, for `status` and the console's dashboard."""
    s, tz = settings.schedule, settings.newsletter.tz
    last = store.last_scheduled_run()
    return {
        "cron": s.cron,
        "timezone": settings.newsletter.timezone,
        "next_run": next_fire(trigger(s.cron, tz), now=now),
        "last_run": None
        if last is None
        else {
            "scheduled_for": last.scheduled_for,
            "started_at": last.started_at,
            "finished_at": last.finished_at,
            "issue_id": last.issue_id,
            "outcome": last.outcome,
            "state": _run_state(last.finished_at, last.host, last.pid),
        },
    }


def _run_state(finished_at: datetime | None, host: str, pid: int) -> str:
    if finished_at is not None:
        return "finished"
    if process_alive(host, pid) is False:
        return f"interrupted (scheduler pid {pid} is gone); the next scheduler start resumes its send"
    return f"still running (pid {pid} on {host})"

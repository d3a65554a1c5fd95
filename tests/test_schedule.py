"""The scheduler: fire times with an injected clock (across daylight-saving changes), missed runs,
one run per fire time among several schedulers, and real `newsletter schedule` processes."""

import json
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from newsletter.config import load_settings
from newsletter.schedule import (
    Scheduler,
    fire_times,
    latest_fire,
    missed_run,
    next_fire,
    run_scheduled,
    trigger,
)
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from .support.helpers import (
    FeedServer,
    Gate,
    Lines,
    Route,
    SmtpSink,
    recent,
    rss,
    run_cli,
    start_command,
    wait_for,
    write_config,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def test_seven_each_morning_across_both_daylight_saving_changes() -> None:
    for tz, spring, autumn in [
        (BERLIN, datetime(2026, 3, 27, tzinfo=BERLIN), datetime(2026, 10, 23, tzinfo=BERLIN)),
        (NEW_YORK, datetime(2026, 3, 6, tzinfo=NEW_YORK), datetime(2026, 10, 30, tzinfo=NEW_YORK)),
    ]:
        for start in (spring, autumn):
            after = start
            times = fire_times(trigger("0 7 * * *", tz), after=after, until=after + timedelta(days=4))
            assert [t.astimezone(tz).hour for t in times] == [7, 7, 7, 7]
            assert len({t.astimezone(tz).date() for t in times}) == 4
            # in UTC: the same zone on both sides would give the wall-clock difference
            gaps = {b.astimezone(UTC) - a.astimezone(UTC) for a, b in zip(times, times[1:], strict=False)}
            assert timedelta(hours=23) in gaps or timedelta(hours=25) in gaps  # the change is real


def test_a_time_that_is_skipped_or_repeated_by_the_clock_fires_once_that_day() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026 and happens twice on 25 October 2026
    for day in (datetime(2026, 3, 29, tzinfo=BERLIN), datetime(2026, 10, 25, tzinfo=BERLIN)):
        times = fire_times(
            trigger("30 2 * * *", BERLIN), after=day - timedelta(hours=1), until=day + timedelta(hours=23)
        )
        assert len(times) == 1


def test_next_fire_is_in_the_configured_zone() -> None:
    now = datetime(2026, 11, 25, 6, 59, tzinfo=UTC)
    assert next_fire(trigger("0 7 * * *", BERLIN), now=now) == datetime(2026, 11, 26, 7, 0, tzinfo=BERLIN)
    assert next_fire(trigger("0 7 * * *", ZoneInfo("UTC")), now=now) == datetime(
        2026, 11, 25, 7, 0, tzinfo=ZoneInfo("UTC")
    )


def test_a_missed_run_is_made_up_within_the_grace_and_skipped_after_it() -> None:
    now = datetime(2026, 11, 25, 7, 30, tzinfo=BERLIN)  # 30 minutes after the 07:00 run
    made_up = missed_run(
        trigger("0 7 * * *", BERLIN), now=now, grace=timedelta(hours=1), already_run=lambda t: False
    )
    assert (
        made_up is not None
        and made_up.make_up
        and made_up.fire_time == datetime(2026, 11, 25, 7, tzinfo=BERLIN)
    )
    skipped = missed_run(
        trigger("0 7 * * *", BERLIN), now=now, grace=timedelta(minutes=10), already_run=lambda t: False
    )
    assert skipped is not None and not skipped.make_up
    assert (
        missed_run(
            trigger("0 7 * * *", BERLIN), now=now, grace=timedelta(hours=1), already_run=lambda t: True
        )
        is None
    )


def test_one_run_per_fire_time_among_schedulers(tmp_path: Path, env: None) -> None:
    settings = load_settings(write_config(tmp_path))
    store = Store(settings.database_url)
    store.migrate()
    store.import_subscribers(
        [NewSubscriber(f"r{i}@example.com", None) for i in range(5)], now=datetime.now(UTC)
    )
    fire = datetime.now(UTC).replace(second=0, microsecond=0)
    first = run_scheduled(settings, store, fire, now=lambda: datetime.now(UTC))
    second = run_scheduled(settings, store, fire, now=lambda: datetime.now(UTC))
    assert first.ran and first.issue_id is not None and "sent=5" in first.line
    assert not second.ran and "taken by another scheduler" in second.line
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 5
    last = store.last_scheduled_run()
    assert last is not None and last.finished_at is not None and "sent=5" in (last.outcome or "")
    store.close()


def _config_with_cron(
    tmp_path: Path,
    sink: SmtpSink | None,
    *,
    minutes_ago: int,
    grace: int,
    database_url: str | None = None,
    delivery: str = "",
    cron: str | None = None,
) -> Path:
    zone = _midday_zone()
    fire = datetime.now(zone) - timedelta(minutes=minutes_ago)
    cron = cron or f"{fire.minute} {fire.hour} * * *"
    smtp = (
        f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\nconnections = 2\n'
        if sink
        else ""
    )
    config = write_config(
        tmp_path,
        database_url=database_url,
        delivery=('transport = "smtp"' if sink else 'transport = "outbox"') + "\n" + delivery,
        extra=f'{smtp}[schedule]\ncron = "{cron}"\nmisfire_grace_seconds = {grace}\n',
    )
    config.write_text(config.read_text().replace('timezone = "UTC"', f'timezone = "{zone.key}"'))
    return config


def _midday_zone() -> ZoneInfo:
    """A fixed-offset zone in which it is about noon now: a cron time some minutes ago is today
    there, whatever the hour in UTC (a fire 30 minutes ago at 00:10 UTC is yesterday's run)."""
    hours_ahead = (12 - datetime.now(UTC).hour + 12) % 24 - 12  # from -12 to +11
    return ZoneInfo(f"Etc/GMT{-hours_ahead:+d}")  # the POSIX sign: Etc/GMT-2 is two hours ahead


def _stop_on_sigterm(procs: list[subprocess.Popen[str]], logs: list[Lines] | None = None) -> str:
    """SIGTERM to each scheduler: all exit 0 within 10 seconds; returns their logs (standard error,
    or what `logs` read of it)."""
    started = time.monotonic()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    if logs is None:
        errors = [p.communicate(timeout=10)[1] for p in procs]
    else:
        for p in procs:
            assert p.stdout is not None
            p.stdout.close()  # the scheduler writes its log to standard error
            p.wait(timeout=10)
        errors = [log.text() for log in logs]
    assert time.monotonic() - started < 10
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    return "".join(errors)


def _with_readers(config: Path, database_url: str, n: int) -> Store:
    run_cli(config, "init")
    store = Store(database_url)
    store.import_subscribers(
        [NewSubscriber(f"r{i}@example.com", None) for i in range(n)], now=datetime.now(UTC)
    )
    return store


def _run_finished(store: Store) -> bool:
    last = store.last_scheduled_run()
    return last is not None and last.finished_at is not None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The scheduler's database: a SQLite file, or a fresh (truncated) schema on the local PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'subscribers.db'}"
    request.getfixturevalue("postgres_store")  # empties the tables
    return str(request.getfixturevalue("postgres_url"))


def test_two_schedulers_make_up_a_missed_run_once_and_stop_on_sigterm(
    tmp_path: Path, smtp_sink: SmtpSink, database_url: str
) -> None:
    config = _config_with_cron(tmp_path, smtp_sink, minutes_ago=30, grace=3600, database_url=database_url)
    store = _with_readers(config, database_url, 50)
    procs = [start_command(config, "schedule"), start_command(config, "schedule")]
    errors = [Lines(p.stderr) for p in procs if p.stderr]
    assert wait_for(lambda: _run_finished(store), timeout=60)
    # both are past their start-up, where the missed run is made up, found taken or found done
    assert wait_for(lambda: all(e.saying("; next run ") for e in errors), timeout=30)
    logs = _stop_on_sigterm(procs, errors)
    assert "making up the run" in logs and "run date=" in logs and "sent=50" in logs
    got = smtp_sink.by_recipient()
    assert len(got) == 50 and all(len(m) == 1 for m in got.values())
    assert len(store.list_issues()) == 1
    status = run_cli(config, "status").stdout
    assert "next scheduled run:" in status and "sent=50" in status
    store.close()


def test_two_schedulers_on_a_live_trigger_run_each_tick_once(
    tmp_path: Path, smtp_sink: SmtpSink, database_url: str, env: None
) -> None:
    """Both schedulers wake at the same live tick of the real APScheduler loop: one runs it, the
    other says it was taken, and later ticks find nothing new. The trigger fires every 3 seconds
    instead of every minute (`Scheduler(when=...)`); each scheduler has its own database
    connections, so the tick is decided in the database as between two processes."""
    config = _config_with_cron(
        tmp_path,
        smtp_sink,
        minutes_ago=0,
        grace=3600,
        database_url=database_url,
        cron="* * * * *",
        delivery="processes = 1",  # no fork from a test process with threads
    )
    store = _with_readers(config, database_url, 30)
    settings = load_settings(config)
    every_3s = CronTrigger(second="*/3", timezone=settings.newsletter.tz)
    logs: list[str] = []
    stores = [Store(database_url) for _ in range(2)]
    schedulers = [Scheduler(settings, st, when=every_3s, emit=lambda m, _f: logs.append(m)) for st in stores]
    threads = [threading.Thread(target=sch.start, daemon=True) for sch in schedulers]
    live = datetime.now(UTC) + timedelta(seconds=1)  # a tick both are surely up and waiting for

    def the_live_tick_ran() -> bool:
        last = store.last_scheduled_run()
        return last is not None and last.finished_at is not None and last.scheduled_for >= live

    for t in threads:
        t.start()
    ran = wait_for(the_live_tick_ran, timeout=30)
    more = datetime.now(UTC) + timedelta(seconds=4)  # and at least one tick after it
    wait_for(lambda: datetime.now(UTC) > more and the_live_tick_ran(), timeout=10)
    for sch in schedulers:
        sch.stop()
    for t in threads:
        t.join(10)
    text = "\n".join(logs)
    assert ran, text
    assert not any(t.is_alive() for t in threads)
    assert "was taken by another scheduler" in text  # the loser of a tick says so
    assert text.count("sent=30") == 1  # one run sent the issue; later ticks found nothing new
    got = smtp_sink.by_recipient()
    assert len(got) == 30 and all(len(m) == 1 for m in got.values())
    assert len(store.list_issues()) == 1
    for st in [store, *stores]:
        st.close()


def test_the_latest_fire_time_is_found_in_a_few_steps_for_seconds_and_for_days() -> None:
    now = datetime(2026, 11, 25, 7, 0, 4, tzinfo=BERLIN)
    assert latest_fire(CronTrigger(second="*/3", timezone=BERLIN), until=now, lookback=timedelta(days=1)) == (
        datetime(2026, 11, 25, 7, 0, 3, tzinfo=BERLIN)
    )
    daily = trigger("0 7 * * *", BERLIN)
    assert latest_fire(daily, until=now, lookback=timedelta(days=2)) == datetime(
        2026, 11, 25, 7, tzinfo=BERLIN
    )
    assert latest_fire(daily, until=now - timedelta(minutes=1), lookback=timedelta(days=2)) == datetime(
        2026, 11, 24, 7, tzinfo=BERLIN
    )
    assert latest_fire(daily, until=now - timedelta(minutes=1), lookback=timedelta(hours=23)) is None


def test_a_scheduler_killed_mid_send_is_resumed_by_the_next_start_without_duplicates(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    n = 600
    config = _config_with_cron(tmp_path, smtp_sink, minutes_ago=30, grace=3600)
    store = _with_readers(config, f"sqlite:///{tmp_path / 'subscribers.db'}", n)
    smtp_sink.gate = Gate(after=300)  # the send held mid-way, each connection's message on the wire
    first = start_command(config, "schedule")
    assert smtp_sink.gate.reached.wait(timeout=60)
    first.kill()
    first.communicate(timeout=10)  # reaped: its pid is gone, so the next start knows it died
    smtp_sink.gate.opened.set()  # what it had on the wire arrives; its fate stays unknown
    assert 300 <= len(smtp_sink.messages) < n
    killed = store.last_scheduled_run()
    assert killed is not None and killed.finished_at is None and killed.issue_id is not None
    assert "interrupted (scheduler pid" in run_cli(config, "status").stdout

    second = start_command(config, "schedule")
    assert wait_for(lambda: _run_finished(store), timeout=60)
    err = _stop_on_sigterm([second])
    assert "making up the run" not in err  # the run was taken; its send is resumed, not run again
    assert f"resume issue={killed.issue_id}" in err

    got = smtp_sink.by_recipient()
    assert all(len(m) == 1 for m in got.values()), "a subscriber got two copies"
    counts = store.issue_counts(killed.issue_id)[0].deliveries
    assert counts["sent"] + counts["unknown"] == n and counts["unknown"] <= 2  # one per connection
    assert len(got) >= counts["sent"]
    assert len(store.list_issues()) == 1
    last = store.last_scheduled_run()
    assert last is not None and "resumed" in (last.outcome or "")
    store.close()


def test_log_file_in_json_has_one_object_per_line_with_the_run_counts(tmp_path: Path) -> None:
    config = _config_with_cron(tmp_path, None, minutes_ago=30, grace=3600)
    store = _with_readers(config, f"sqlite:///{tmp_path / 'subscribers.db'}", 3)
    log_file = tmp_path / "logs" / "schedule.log"
    log_file.parent.mkdir()
    proc = start_command(config, "schedule", "--log-file", str(log_file), "--log-json")
    assert wait_for(lambda: _run_finished(store), timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "run date=" not in err  # the log went to the file
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all({"time", "level", "message", "event"} <= r.keys() for r in records)
    run = next(r for r in records if r["event"] == "run")
    today = datetime.now(load_settings(config).newsletter.tz).date()
    assert run["date"] == today.isoformat() and isinstance(run["issue"], int)
    assert run["stories"] > 0 and run["sent"] == 3 and run["deferred"] == 0 and run["bounced"] == 0
    assert run["unknown"] == 0 and run["seconds"] >= 0 and run["message"].startswith("run date=")
    assert [r["event"] for r in records][-1] == "stopped"
    store.close()


def test_a_day_with_too_few_stories_sends_nothing_and_they_wait_for_the_next_day(
    tmp_path: Path, env: None, feed_server: FeedServer
) -> None:
    first = [
        {"title": f"Early story {i}", "link": f"https://example.com/e{i}", "date": recent(2 + i)}
        for i in range(2)
    ]
    feed_server.routes["/feed"] = Route(rss(first))
    config = write_config(
        tmp_path,
        sources=[("Feed", feed_server.url("/feed"))],
        extra="[digest]\nmin_stories = 3\nwindow_hours = 48\n",
    )
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    store.import_subscribers([NewSubscriber("r@example.com", None)], now=datetime.now(UTC))
    # today's fire time at 06:00 (the config's zone is UTC): an hour after it is still the same day
    fire = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0)
    quiet = run_scheduled(settings, store, fire, now=lambda: datetime.now(UTC))
    assert quiet.ran and quiet.issue_id is None and quiet.fields["new_stories"] == 2
    assert "2 new stories in the last 48 hours, 3 needed" in quiet.line
    assert store.list_issues() == [] and not (tmp_path / "outbox").exists()
    last = store.last_scheduled_run()
    assert last is not None and last.finished_at is not None and "3 needed" in (last.outcome or "")

    second = [
        {"title": f"Later story {i}", "link": f"https://example.com/l{i}", "date": recent(1)}
        for i in range(2)
    ]
    feed_server.routes["/feed"] = Route(rss(first + second))
    tomorrow = lambda: datetime.now(UTC) + timedelta(days=1)  # noqa: E731
    busy = run_scheduled(settings, store, fire + timedelta(days=1), now=tomorrow)
    assert busy.ran and busy.issue_id is not None and busy.fields["stories"] == 4 and busy.fields["sent"] == 1
    mail = next((tmp_path / "outbox").rglob("*.eml")).read_bytes()
    assert b"Early story 0" in mail and b"Later story 1" in mail  # yesterday's stories waited for today

    # one rule for the scheduler and the CLI: once the day's issue is built, no feed is fetched
    fetched = len(feed_server.requests)
    later = run_scheduled(settings, store, fire + timedelta(days=1, seconds=1), now=tomorrow)  # same day
    assert later.ran and "new_stories" not in later.fields and len(feed_server.requests) == fetched
    built = store.get_issue(busy.issue_id)
    assert built is not None
    again = json.loads(run_cli(config, "build", "--date", built.issue_date.isoformat(), "--json").stdout)
    assert again["issue"]["id"] == built.id and len(feed_server.requests) == fetched
    run_cli(config, "build", "--json")  # today: no issue yet, so the feeds are read
    assert len(feed_server.requests) == fetched + 1
    store.close()


def test_a_run_missed_by_more_than_the_grace_is_skipped_and_said(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = _config_with_cron(tmp_path, smtp_sink, minutes_ago=30, grace=600)
    run_cli(config, "init")
    store = Store(f"sqlite:///{tmp_path / 'subscribers.db'}")  # a scheduler ran yesterday, then none
    yesterday = datetime.now(UTC) - timedelta(days=1, minutes=30)
    store.claim_scheduled_run(yesterday.replace(second=0, microsecond=0), host="h", pid=1, now=yesterday)
    store.close()
    log = tmp_path / "schedule.log"
    proc = start_command(config, "schedule", "--log-file", str(log))
    assert wait_for(lambda: log.exists() and "scheduled '" in log.read_text(), timeout=30)  # started
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 0
    text = log.read_text()
    assert "skipping the run" in text and "misfire_grace_seconds=600" in text
    assert smtp_sink.messages == []


def test_resuming_sends_what_is_due_and_leaves_a_retry_for_its_time(tmp_path: Path, env: None) -> None:
    """An interrupted send with one pending row and one deferred row not yet due: the pending
    message goes now, the deferred one waits for its retry, and the job does not wait for it."""
    from sqlalchemy import update

    from newsletter.db.models import Delivery, DeliveryStatus
    from newsletter.issues.build import build, gather
    from newsletter.schedule import Scheduler

    settings = load_settings(write_config(tmp_path))
    store = Store(settings.database_url)
    store.migrate()
    now = datetime.now(UTC)
    store.import_subscribers(
        [NewSubscriber("due@example.com", None), NewSubscriber("later@example.com", None)], now=now
    )
    gather(settings, store, now=now)
    issue = build(settings, store, issue_date=now.date(), now=now).issue
    assert issue is not None
    store.start_send(issue.id)  # the send began, then stopped before a message went out
    later = store.get_subscriber("later@example.com")
    assert later is not None
    with store.write() as s:
        s.execute(
            update(Delivery)
            .where(Delivery.subscriber_id == later.id)
            .values(status=DeliveryStatus.DEFERRED, attempts=1, next_attempt_at=now + timedelta(hours=1))
        )
    lines: list[str] = []
    started = time.monotonic()
    Scheduler(settings, store, emit=lambda line, fields: lines.append(line)).resume_unfinished()
    assert time.monotonic() - started < 30  # it did not sit waiting for the retry
    files = list((tmp_path / "outbox").rglob("*.eml"))
    assert len(files) == 1 and b"due@example.com" in files[0].read_bytes()
    counts = store.issue_counts(issue.id)[0].deliveries
    assert counts["sent"] == 1 and counts["deferred"] == 1
    assert any("resume issue=" in line and "sent=1" in line for line in lines)
    store.close()


def test_any_error_closes_the_run_as_failed_and_is_logged(tmp_path: Path, env: None) -> None:
    """A database error in the main job (here a table gone): the run is still closed, as failed
    with the sentence that names the database and what it said, and the log says so; the
    scheduler goes on."""
    from sqlalchemy import text

    from newsletter.schedule import Scheduler

    settings = load_settings(write_config(tmp_path))
    store = Store(settings.database_url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE feed_states"))  # a broken database, as a bad migration leaves it
        conn.execute(text("ALTER TABLE stories RENAME TO stories_gone"))
    lines: list[tuple[str, dict[str, object]]] = []
    scheduler = Scheduler(settings, store, emit=lambda line, fields: lines.append((line, fields)))
    scheduler.run_once(datetime.now(UTC).replace(second=0, microsecond=0))
    (line, fields), *_ = lines
    said = f"the database file {tmp_path / 'subscribers.db'} could not be used: no such table"
    assert "error=" in line and said in str(fields.get("error")), lines
    last = store.last_scheduled_run()
    assert last is not None and last.finished_at is not None and said in (last.outcome or "")
    store.close()


def test_every_log_line_goes_to_the_configured_log_apschedulers_included(tmp_path: Path) -> None:
    import logging

    from newsletter.cli.operations import configure_log

    log_file = tmp_path / "schedule.log"
    handler = configure_log(log_file, as_json=True)
    try:
        logging.getLogger("apscheduler.scheduler").warning("Run time of job %r was missed", "tick")
        logging.getLogger("newsletter.schedule").info("run date=x", extra={"fields": {"event": "run"}})
        logging.getLogger("newsletter.admin").warning("something from the engine")
    finally:
        for name in ("newsletter", "apscheduler"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["message"] for r in records] == [
        "Run time of job 'tick' was missed",
        "run date=x",
        "something from the engine",
    ]
    assert records[0]["logger"] == "apscheduler.scheduler" and records[1]["event"] == "run"


def test_a_stop_while_the_scheduler_starts_is_not_lost(tmp_path: Path, env: None) -> None:
    """SIGTERM can land after the start-up work and before APScheduler's loop runs (reproduced
    under load: the process then never exited). A stop at that moment still ends `start`."""
    from newsletter.schedule import Scheduler

    settings = load_settings(write_config(tmp_path))
    store = Store(settings.database_url)
    store.migrate()
    lines: list[str] = []

    def emit(line: str, _fields: dict[str, object]) -> None:
        lines.append(line)
        if line.startswith("scheduled "):  # the last word before the loop starts
            scheduler.stop()

    scheduler = Scheduler(settings, store, emit=emit)
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), lines
    assert not scheduler.scheduler.running
    store.close()

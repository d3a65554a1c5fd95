"""Real `newsletter send` processes: killed, stopped, and several at once on one issue."""

import json
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.helpers import (
    Gate,
    SmtpSink,
    assert_tally_counts,
    run_cli,
    start_command,
    wait_for,
    write_config,
)

CONNECTIONS = 4


def prepare(
    tmp_path: Path, sink: SmtpSink, n: int, *, database_url: str | None = None, extra: str = ""
) -> Path:
    config = write_config(
        tmp_path,
        database_url=database_url,
        delivery='transport = "smtp"' + extra,
        extra=(
            f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
            f"connections = {CONNECTIONS}\n"
        ),
    )
    run_cli(config, "init")
    store = Store(_url(config, database_url))
    store.import_subscribers(
        [NewSubscriber(f"reader{i}@example.com", None) for i in range(n)], now=datetime.now(UTC)
    )
    store.close()
    built = json.loads(run_cli(config, "build", "--json").stdout)
    assert built["issue"] is not None
    return config


def _url(config: Path, database_url: str | None) -> str:
    return database_url or f"sqlite:///{config.parent / 'subscribers.db'}"


def status(config: Path, env: dict[str, str] | None = None) -> dict[str, int]:
    issues = json.loads(run_cli(config, "status", "--json", extra_env=env).stdout)["issues"]
    return dict(issues[0]["deliveries"])


N = 600  # readers per send; a gate in the sink holds the send where the test needs it


@pytest.mark.parametrize("kill_after", [0, 200, 400, N])
def test_sigkill_then_resume_sends_nobody_twice(tmp_path: Path, smtp_sink: SmtpSink, kill_after: int) -> None:
    n = N
    config = prepare(tmp_path, smtp_sink, n)
    store = Store(_url(config, None))
    issue_id = store.latest_issue().id  # type: ignore[union-attr]
    if 0 < kill_after < n:  # each connection's message on the wire held: the send is mid-way
        smtp_sink.gate = Gate(after=kill_after)
    proc = start_command(config, "send")
    if kill_after == 0:  # registered and ready, not a message out yet
        assert wait_for(lambda: bool(store.live_senders(issue_id)) or proc.poll() is not None, timeout=30)
    elif smtp_sink.gate:
        assert smtp_sink.gate.reached.wait(timeout=60)
    else:  # at the very end, or just after it
        assert wait_for(lambda: len(smtp_sink.messages) >= kill_after or proc.poll() is not None, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    if smtp_sink.gate:
        smtp_sink.gate.opened.set()  # what was on the wire arrives, and its fate stays unknown
    killed_at = len(smtp_sink.messages)

    resumed = run_cli(config, "send")
    assert resumed.returncode == 0
    got = smtp_sink.by_recipient()
    assert all(len(copies) == 1 for copies in got.values()), "an address received two copies"
    counts = status(config)
    missing = {f"reader{i}@example.com" for i in range(n)} - set(got)
    assert len(missing) <= CONNECTIONS  # at most one in flight per connection
    assert counts["unknown"] <= CONNECTIONS and counts["unknown"] >= len(missing)
    assert counts["sent"] + counts["unknown"] == n
    assert counts["pending"] == counts["sending"] == counts["deferred"] == 0
    if counts["unknown"]:
        assert "unknown" in resumed.stderr
    assert assert_tally_counts(store, issue_id) == {k: v for k, v in counts.items() if v}  # reaped too
    store.close()
    assert killed_at <= n


def test_sigterm_stops_cleanly_and_the_next_send_finishes(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    n = N
    config = prepare(tmp_path, smtp_sink, n)
    smtp_sink.gate = Gate(after=200)
    proc = start_command(config, "send")
    assert smtp_sink.gate.reached.wait(timeout=60)  # mid-send, each connection's message on the wire
    proc.send_signal(signal.SIGTERM)
    smtp_sink.gate.opened.set()  # what was in flight gets its answer, to be recorded
    out, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, 1)
    if proc.returncode == 1:
        assert "stopped by a signal" in err and "Traceback" not in err
    mid = status(config)
    assert mid["sending"] == 0 and mid["unknown"] == 0  # what was in flight was recorded
    run_cli(config, "send")
    got = smtp_sink.by_recipient()
    assert len(got) == n and all(len(c) == 1 for c in got.values())
    assert status(config)["sent"] == n


def test_a_second_sender_on_sqlite_refuses_or_waits(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    n = 300
    config = prepare(tmp_path, smtp_sink, n, extra="\nrate_per_second = 100")  # about three seconds
    first = start_command(config, "send")
    store = Store(_url(config, None))
    issue_id = store.latest_issue().id  # type: ignore[union-attr]
    assert wait_for(lambda: bool(store.live_senders(issue_id)), timeout=30)
    refused = run_cli(config, "send", check=False)
    assert refused.returncode == 1 and "being sent by another process" in refused.stderr
    waited = run_cli(config, "send", "--wait", "--json")
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert json.loads(waited.stdout)["this_run"] == {}  # the first one had sent everything
    got = smtp_sink.by_recipient()
    assert len(got) == n and all(len(c) == 1 for c in got.values())
    store.close()


@pytest.mark.postgres
def test_three_senders_share_one_issue_on_postgresql(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    import psycopg

    schema = postgres_url.rsplit("%3D", 1)[1] + "_workers"
    with psycopg.connect(postgres_url.replace("+psycopg", "").split("?")[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = postgres_url.rsplit("%3D", 1)[0] + "%3D" + schema
    env = {"NEWSLETTER_DATABASE_URL": url}
    n = N
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\nconnections = 2\n',
    )
    run_cli(config, "init", extra_env=env)
    store = Store(url)
    store.import_subscribers(
        [NewSubscriber(f"reader{i}@example.com", None) for i in range(n)], now=datetime.now(UTC)
    )
    store.close()
    run_cli(config, "build", extra_env=env)
    # held from the 100th message until three connections wait, of two senders at least (two each)
    smtp_sink.gate = gate = Gate(after=100)
    procs = [start_command(config, "send", "--json", extra_env=env) for _ in range(3)]
    assert wait_for(lambda: len(gate.held) >= 3 or any(p.poll() is not None for p in procs), timeout=60)
    gate.opened.set()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    sent_by = [json.loads(out)["this_run"].get("sent", 0) for out, _ in results]
    assert sum(sent_by) == n
    assert sum(1 for s in sent_by if s > 0) >= 2  # the work was shared, not done by one
    got = smtp_sink.by_recipient()
    assert len(got) == n and all(len(c) == 1 for c in got.values())
    assert status(config, env)["sent"] == n
    store = Store(url)  # three senders' shares of the tally add up
    assert assert_tally_counts(store, store.latest_issue().id) == {"sent": n}  # type: ignore[union-attr]
    store.close()


def test_pause_mid_send_then_resume_sends_each_subscriber_exactly_once(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    n = 1000
    config = prepare(tmp_path, smtp_sink, n, extra="\nrate_per_second = 400")
    smtp_sink.gate = Gate(after=300)  # held mid-send while the operator pauses
    proc = start_command(config, "send")
    assert smtp_sink.gate.reached.wait(timeout=60)
    paused = run_cli(config, "pause")
    assert "paused" in paused.stdout
    smtp_sink.gate.opened.set()  # at 400 a second, the send sees the pause long before its end
    out, err = proc.communicate(timeout=20)  # the running send ends by itself, within a second or so
    assert proc.returncode == 0, err
    assert "is paused" in out
    at_pause = len(smtp_sink.messages)
    assert at_pause < n
    store = Store(_url(config, None))
    issue = store.list_issues()[0]
    mid = store.issue_counts(issue.id)[0].deliveries
    assert mid["sending"] == 0 and mid["unknown"] == 0 and mid["sent"] == at_pause  # all in flight recorded
    assert assert_tally_counts(store, issue.id) == {k: v for k, v in mid.items() if v}
    refused = run_cli(config, "send", check=False)  # a paused issue is not sent by accident
    assert refused.returncode == 1 and "is paused" in refused.stderr
    assert len(smtp_sink.messages) == at_pause
    shown = json.loads(run_cli(config, "status", "--json").stdout)["issues"][0]
    assert shown["paused"] is True and shown["status"] == "sending"

    config.write_text(config.read_text().replace("rate_per_second = 400", ""))  # slowed only to pause
    resumed = run_cli(config, "resume")
    assert f"issue {issue.id}:" in resumed.stdout
    got = smtp_sink.by_recipient()
    assert len(got) == n and all(len(m) == 1 for m in got.values())
    final = store.issue_counts(issue.id)[0]
    assert final.deliveries["sent"] == n == len(smtp_sink.messages) and final.status == "sent"
    store.close()

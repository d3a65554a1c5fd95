"""Found by an outside attack on SPEC 8, kept as regressions: exactly once with renderings, against
real `newsletter send` processes: kill -9 mid-send, choices changed while the sender is dead, an
unsubscribe during a send, two senders on PostgreSQL racing to fix the audience and render."""

from __future__ import annotations

import json
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.db.models import Frequency
from newsletter.delivery.sending import send
from newsletter.issues.build import gather_and_build, today
from newsletter.store import Store
from newsletter.subscribers.records import Preferences

from ..support.editions import ALERTS, SPORT, TECH, WORLD, add, sectioned_config, titles
from ..support.helpers import FeedServer, Gate, SmtpSink, run_cli, start_command, wait_for

SETS: list[tuple[str, ...]] = [(), ("Sport",), ("World", "Tech"), ("Culture",), ("Tech",)]
EXPECT = {
    (): {t for t, _ in WORLD + SPORT + TECH + ALERTS},
    ("Sport",): {t for t, _ in SPORT + ALERTS},
    ("World", "Tech"): {t for t, _ in WORLD + TECH + ALERTS},
    ("Culture",): {t for t, _ in ALERTS},
    ("Tech",): {t for t, _ in TECH + ALERTS},
}


def _readers(store: Store, n: int) -> dict[str, tuple[str, ...]]:
    chosen = {}
    for i in range(n):
        sections = SETS[i % len(SETS)]
        chosen[add(store, f"r{i:04}@example.com", *sections).email] = sections
    return chosen


def _check(sink: SmtpSink, chosen: dict[str, tuple[str, ...]], store: Store, *, missing_at_most: int) -> None:
    got = sink.by_recipient()
    assert all(len(c) == 1 for c in got.values()), [a for a, c in got.items() if len(c) > 1]
    assert len(set(chosen) - set(got)) <= missing_at_most
    for address, mails in got.items():
        for mail in mails:
            assert set(titles(mail.data)[2]) == EXPECT[chosen[address]], address
            _links_are_their_own(mail.data, address, store)


def _links_are_their_own(raw: bytes, address: str, store: Store) -> None:
    """The reader's unsubscribe and preference links, in the header and both parts, are theirs."""
    import email
    import re
    from email import policy

    from newsletter.delivery.tokens import Tokens

    from ..support.helpers import SECRET

    tokens = Tokens(SECRET)
    msg = email.message_from_bytes(raw, policy=policy.default)
    body = "".join(p.get_content() for p in msg.walk() if p.get_content_type() in ("text/plain", "text/html"))
    ids = {tokens.read_preferences(t) for t in re.findall(r"/preferences/([A-Za-z0-9._-]+)", body)}
    ids |= {
        tokens.read_unsubscribe(t)
        for t in re.findall(r"/unsubscribe/([A-Za-z0-9._-]+)", body + str(msg["List-Unsubscribe"]))
    }
    assert len(ids) == 1, (address, ids)
    found = store.get_subscriber(address)
    assert found is not None and ids == {found.id}, (address, ids)


def _prepare(
    tmp_path: Path, feeds: FeedServer, sink: SmtpSink, url: str | None = None
) -> tuple[Settings, Path]:
    settings = sectioned_config(tmp_path, feeds, sink)
    config = tmp_path / "config.toml"
    if url is not None:
        config.write_text(config.read_text().replace('url = "sqlite:///subscribers.db"', f'url = "{url}"'))
    return settings, config


@pytest.mark.parametrize("kill_after", [0, 150])
def test_kill_9_mid_send_with_renderings_then_send_again(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None, kill_after: int
) -> None:
    settings, config = _prepare(tmp_path, feed_server, smtp_sink)
    run_cli(config, "init")
    store = Store(settings.database_url)
    chosen = _readers(store, 400)
    built = json.loads(run_cli(config, "build", "--json").stdout)
    assert built["variants"] == 5  # all, Sport, World+Tech, Tech, Culture (the sectionless Alerts only)
    issue_id = built["issue"]["id"]
    if kill_after:
        smtp_sink.gate = Gate(after=kill_after)
    proc = start_command(config, "send")
    if kill_after:
        assert smtp_sink.gate is not None and smtp_sink.gate.reached.wait(60)
    else:
        assert wait_for(lambda: bool(store.live_senders(issue_id)) or proc.poll() is not None, 30)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    if smtp_sink.gate:
        smtp_sink.gate.opened.set()
    # while the sender is dead every reader changes their choice: nothing decided may change
    for sub in list(store.iter_subscribers()):
        store.set_preferences(sub.id, Preferences(("World",), Frequency.DAILY), name=None)
    again = json.loads(run_cli(config, "send", "--json").stdout)
    _check(smtp_sink, chosen, store, missing_at_most=2)
    counts = again["counts"]
    assert counts["sent"] + counts.get("unknown", 0) == 400, counts
    assert again["variants"] == 5
    if counts.get("unknown"):  # resent on request: a copy may be a second one, never a wrong one
        before = len(smtp_sink.messages)
        run_cli(config, "send", "--resend-unknown")
        assert len(smtp_sink.messages) == before + counts["unknown"]
        for m in smtp_sink.messages[before:]:
            (address,) = m.rcpt_tos
            assert set(titles(m.data)[2]) == EXPECT[chosen[address]], address
            _links_are_their_own(m.data, address, store)
    store.close()


def test_unsubscribe_during_the_send_never_gives_a_second_copy(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None
) -> None:
    settings, _ = _prepare(tmp_path, feed_server, smtp_sink)
    store = Store(settings.database_url)
    store.migrate()
    chosen = _readers(store, 200)
    gate = smtp_sink.gate = Gate(after=40)
    when = datetime.now(UTC)
    issue = gather_and_build(settings, store, issue_date=today(settings, when), now=when)[1][0].issue
    assert issue is not None
    done: list[object] = []
    sending = threading.Thread(target=lambda: done.append(send(settings, store, issue)), daemon=True)
    sending.start()
    assert gate.reached.wait(30)
    for sub in list(store.iter_subscribers())[::3]:  # a third of the list leaves mid-send
        store.unsubscribe(sub.id, now=datetime.now(UTC))
    gate.opened.set()
    sending.join(60)
    assert done
    _check(smtp_sink, chosen, store, missing_at_most=200)
    counts = json.loads(run_cli(tmp_path / "config.toml", "status", "--json").stdout)["issues"][0][
        "deliveries"
    ]
    assert counts["sent"] + counts["skipped"] == 200 and counts["pending"] == 0, counts
    store.close()


@pytest.mark.postgres
def test_two_senders_on_postgres_race_to_fix_the_audience_and_render(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, env: None, postgres_url: str
) -> None:
    settings, config = _prepare(tmp_path, feed_server, smtp_sink, url=postgres_url)
    from sqlalchemy import text

    store = Store(postgres_url)
    store.migrate()
    emptied = "deliveries, issue_variants, stories, issues, subscribers, senders"
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {emptied} RESTART IDENTITY CASCADE"))
    add(store, "seed@example.com")
    built = json.loads(run_cli(config, "build", "--json").stdout)
    assert built["variants"] == 1  # nobody chose a set yet: every rendering is made when the send begins
    chosen = {"seed@example.com": ()} | _readers(store, 300)
    procs = [start_command(config, "send") for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    _check(smtp_sink, chosen, store, missing_at_most=0)
    assert len(smtp_sink.messages) == 301
    status = json.loads(run_cli(config, "status", "--json").stdout)["issues"][0]
    assert status["deliveries"]["sent"] == 301
    with store.read() as s:
        assert s.execute(text("SELECT count(*) FROM issue_variants")).scalar() == 4
    store.close()

"""A list to tidy (SPEC 10): a config mailing over SMTP with its [subscribers] rules, its database
made as `init` makes it, and signups whose confirmation went out some hours ago."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from newsletter.config import load_settings
from newsletter.db.models import Subscriber, SubscriberStatus
from newsletter.store import Store

from .helpers import SmtpSink, run_cli, write_config

TIDY = "remind_after_hours = 47.5\nprune_pending_after_hours = 336\n"


def tidy_store(tmp_path: Path, sink: SmtpSink, subscribers: str = TIDY) -> tuple[Path, Store]:
    """A config mailing over SMTP to `sink` with `subscribers` as its [subscribers] section, its
    database made as `init` makes it, and its store."""
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
        f"[subscribers]\n{subscribers}",
    )
    run_cli(config, "init")
    return config, Store(load_settings(config).database_url)


def signup(
    store: Store, address: str, status: SubscriberStatus, *, mailed_hours_ago: float, **set: object
) -> int:
    """A subscriber in `status` whose confirmation went out `mailed_hours_ago`, with the columns in
    `set` set too; its id."""
    now = datetime.now(UTC)
    sub, _ = store.add_subscriber(
        address, "A Name", now=now - timedelta(hours=mailed_hours_ago), status=status, consent_ip="192.0.2.9"
    )
    store.confirmation_sent(sub.id, now=now - timedelta(hours=mailed_hours_ago))
    if set:
        with store.write() as s:
            s.execute(update(Subscriber).where(Subscriber.id == sub.id).values(**set))
    return sub.id

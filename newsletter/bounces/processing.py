"""`newsletter bounces`: read the bounce mailbox and act on what it holds.

Each mail is classified (bounces.classify) and judged by the bounce policy (bounces.policy).

Every mail read is recorded by its digest, in the same transaction as what it changed, so a
re-run counts nothing twice. Each mail is handled on its own: one that cannot be read, understood
or stored is recorded and reported once, and the others are still read. Nothing is deleted from
the mailbox."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..config import Settings, read_secret_key
from ..db.models import MailKind
from ..delivery.tokens import Tokens
from ..errors import ConfigError
from .classify import classify, printable
from .mailbox import MailItem, read_mailbox
from .policy import BouncePolicy
from .records import MailOutcome

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["BounceReport", "process_bounces"]


@dataclass
class BounceReport:
    read: int = 0
    already_read: int = 0
    kinds: dict[MailKind, int] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # one line per subscriber changed or counted
    unrecognised: list[str] = field(default_factory=list)  # source: why

    def count(self, kind: MailKind) -> None:
        self.read += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def as_json(self) -> dict[str, object]:
        return {
            "read": self.read,
            "already_read": self.already_read,
            "kinds": self.kinds,
            "changes": self.changes,
            "unrecognised": self.unrecognised,
        }


def process_bounces(settings: Settings, store: Store, *, now: datetime) -> BounceReport:
    b = settings.bounces
    if b is None:
        raise ConfigError("there is no [bounces] section in the configuration: add return_path and mailbox")
    tokens = Tokens(read_secret_key(settings))
    report = BounceReport()

    def seen(source: str) -> bool:
        if store.bounce_source_seen(source):
            report.already_read += 1
            return True
        return False

    policy = BouncePolicy(b.soft_bounce_limit, timedelta(days=b.soft_bounce_window_days))

    def handle(item: MailItem, digest: str) -> None:
        if store.bounce_mail_seen(digest):
            report.already_read += 1
            return
        verdict = classify(
            item.data, tokens=tokens, return_path=b.return_path, base_url=settings.newsletter.base_url
        )
        outcome: MailOutcome | None = store.record_bounce_mail(
            digest=digest,
            source=item.source,
            kind=verdict.kind,
            note=verdict.note,
            events=verdict.events,
            now=now,
            policy=policy,
        )
        if outcome is None:  # another run recorded it first
            report.already_read += 1
            return
        report.count(outcome.kind)
        report.changes += outcome.lines
        if verdict.kind == MailKind.UNRECOGNISED:
            report.unrecognised.append(f"{item.source}: {verdict.note}")

    for item in read_mailbox(b.mailbox, settings, skip=seen):
        digest = hashlib.sha256(item.data).hexdigest()
        try:
            handle(item, digest)
        except Exception as exc:  # noqa: BLE001 - one mail, whatever broke, never stops the others
            note = f"could not be handled: {type(exc).__name__}: {printable(str(exc))[:300]}"
            try:  # recorded, so it is reported once and never retried on every run
                recorded = store.record_bounce_mail(
                    digest=digest,
                    source=item.source,
                    kind=MailKind.UNREADABLE,
                    note=note,
                    events=(),
                    now=now,
                    policy=policy,
                )
            except Exception as again:  # noqa: BLE001 - the database itself fails: said, tried next run
                recorded = None
                note += f"; not recorded either ({type(again).__name__}), tried again next run"
            if recorded is not None:
                report.count(MailKind.UNREADABLE)
            report.unrecognised.append(f"{item.source}: {note}")
    return report

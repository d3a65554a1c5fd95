"""`newsletter subscribers ...`: add, import, export, list, remove, tidy."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from ..db.models import Frequency, SubscriberSource, SubscriberStatus
from ..errors import NotFoundError, UsageError
from ..private import open_private, private_folder
from ..subscribers.records import Preferences
from ..subscribers.rules import (
    Choices,
    InvalidSubscriber,
    check_preferences,
    chosen_sections,
    import_csv,
    parse_sections,
    write_csv,
)
from . import App, _checked, _now, _print_json, err, main, out, pass_app

# -- subscribers --------------------------------------------------------------------------------


@main.group()
def subscribers() -> None:
    """Add, import, export, list and remove subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default=None, help="the subscriber's name")
@click.option("--sections", default=None, help='the sections they get, "A,B" (default: all)')
@click.option("--frequency", default=None, help="daily (default) or weekly")
@pass_app
def subscribers_add(
    app: App, email: str, name: str | None, sections: str | None, frequency: str | None
) -> None:
    """Add an active subscriber (no confirmation mail); with --sections or --frequency, a known
    one's choices are set too."""
    address, clean_name = _checked(email, name)
    preferences = _preferences(app, address, sections, frequency)
    sub, created = app.store.add_subscriber(
        address, clean_name, now=_now(), source=SubscriberSource.CLI, preferences=preferences
    )
    changed = " (choices saved)" if preferences is not None and not created else ""
    out.print(
        f"{'added' if created else 'already present'}: {sub.email} ({sub.status}){changed}", markup=False
    )


def _preferences(app: App, address: str, sections: str | None, frequency: str | None) -> Preferences | None:
    """The choices given on the command line, checked by the one rule; None when none was given.
    A known reader keeps what the options leave out."""
    if sections is None and frequency is None:
        return None
    choices = Choices.of(app.settings)
    known = app.store.get_subscriber(address)
    try:
        if sections is None:
            names = list(chosen_sections(known.sections, choices)) or None if known else None
        else:  # --sections "": an empty choice, refused by the rule
            names = parse_sections(sections, choices, ",") or []
        default = known.frequency if known else Frequency.DAILY
        return check_preferences(names, frequency, choices, default_frequency=default)
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@pass_app
def subscribers_import(app: App, file: Path) -> None:
    """Import a CSV file with an `email` column and optional `name`, `sections` (names separated
    by ";", empty for all) and `frequency` columns."""
    report = import_csv(file, app.store, now=_now(), choices=Choices.of(app.settings))
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
    choices = Choices.of(app.settings)
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
                        "sections": list(chosen_sections(s.sections, choices)),
                        "frequency": s.frequency.value,
                    }
                    for s in rows
                ]
            }
        )
        return
    table = Table("email", "name", "status", "since", "frequency", "sections")
    for s in rows:
        taken = ", ".join(chosen_sections(s.sections, choices)) or "all"
        table.add_row(s.email, s.name or "", s.status, f"{s.created_at:%Y-%m-%d}", s.frequency.value, taken)
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


@subscribers.command("tidy")
@click.option("--dry-run", is_flag=True, help="say what would be done, changing nothing")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def subscribers_tidy(app: App, dry_run: bool, as_json: bool) -> None:
    """Remind pending signups once and delete those pending too long ([subscribers])."""
    from ..config import read_secret_key
    from ..delivery.tokens import Tokens
    from ..subscribers.tidy import tidy
    from .templates import require_templates

    require_templates(app)  # a reminder is the operator's confirm template: checked before any is sent

    report = tidy(app.settings, app.store, Tokens(read_secret_key(app.settings)), now=_now(), dry_run=dry_run)
    if as_json:
        _print_json(report.as_dict())
        return
    verb = ("would remind", "would delete") if dry_run else ("reminded", "deleted")
    line = f"{verb[0]} {report.reminded} pending signups; {verb[1]} {report.pruned} pending too long"
    out.print(
        line + (f"; {report.not_sent} reminders not sent (tried again next time)" if report.not_sent else ""),
        markup=False,
    )

"""`newsletter subscribers ...`: add, import, export, list, remove."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from ..db.models import SubscriberSource, SubscriberStatus
from ..errors import NotFoundError
from ..private import open_private, private_folder
from ..subscribers.rules import import_csv, write_csv
from . import App, _checked, _now, _print_json, err, main, out, pass_app

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
    sub, created = app.store.add_subscriber(address, clean_name, now=_now(), source=SubscriberSource.CLI)
    out.print(f"{'added' if created else 'already present'}: {sub.email} ({sub.status})", markup=False)


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

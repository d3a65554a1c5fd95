"""`bounces`, `admin`, `dkim-keygen`, `schedule` and `serve`: running the newsletter."""

from __future__ import annotations

import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from .. import operators
from ..links import Links
from . import App, _log, _now, _print_json, err, main, out, pass_app
from .templates import require_templates


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
@pass_app
def bounces(app: App, as_json: bool) -> None:
    """Read the [bounces] mailbox once: bounces and complaints (ARF) acted on, each mail counted once."""
    from ..bounces.processing import process_bounces

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
        f"{Links(app.settings.newsletter.base_url).console()} (newsletter serve)",
        markup=False,
    )


@main.command("dkim-keygen")
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
@click.option("--force", is_flag=True, help="replace an existing key (mail signed with it stops verifying)")
@pass_app
def dkim_keygen(app: App, bits: int, force: bool) -> None:
    """Write the DKIM private key ([dkim] private_key_file) and print the DNS TXT record to publish."""
    from ..config import DkimSettings
    from ..delivery.signing import dns_record, write_key

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
    from ..schedule import Scheduler

    require_templates(app)
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
    from ..web import create_app
    from ..web.server import create_server

    require_templates(app)
    web = create_app(app.settings, store=app.store)
    host, port = host or app.settings.web.host, port or app.settings.web.port
    server = create_server(web, host, port)

    class Stopped(SystemExit):  # waitress's loop lets it through; an Exception in a handler it swallows
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

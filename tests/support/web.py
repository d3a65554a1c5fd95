"""What the tests of the site share: the app's parts, the links in the mails it sends, `newsletter
serve` as a user starts it (a real process on a free loopback port), and Debian's Chromium."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from email import policy
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from flask import Flask

from newsletter.config import load_settings
from newsletter.store import Store
from newsletter.web import create_app
from newsletter.web.confirmations import ConfirmationMailer

from .helpers import Received, SmtpSink, free_port, run_cli, start_cli, wait_for, write_config

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# -- the app's parts ----------------------------------------------------------------------------


def store_of(app: Flask) -> Store:
    return app.extensions["newsletter"].store  # type: ignore[no-any-return]


def mailer_of(app: Flask) -> ConfirmationMailer:
    return app.extensions["newsletter"].confirmations  # type: ignore[no-any-return]


# -- the app on its own


def smtp_app(
    tmp_path: Path, sink: SmtpSink | int, extra: str, now: Callable[[], datetime]
) -> tuple[Flask, Store]:
    """The web app on a fresh SQLite file, mailing over SMTP to `sink` (or a port), with `extra` config."""
    port = sink if isinstance(sink, int) else sink.port
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n' + extra,
    )
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    application = create_app(settings, store=store, now=now)
    application.config["TESTING"] = True
    return application, store


# -- the links in the mails ---------------------------------------------------------------------


def mail_text(received: Received) -> str:
    """The text part of a mail the sink kept."""
    msg = email.message_from_bytes(received.data, policy=policy.default)
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr,no-any-return]


def link_in_mail(sink: SmtpSink, address: str, pattern: str, *, index: int = -1) -> str:
    """The first match of `pattern` in the text of the `index`th mail to `address`."""
    text = mail_text(sink.by_recipient()[address][index])
    match = re.search(pattern, text)
    assert match, text
    return match.group(0)


def confirm_link(sink: SmtpSink, address: str) -> str:
    """The path of the confirmation link in the one mail `address` got (base_url news.example.com)."""
    (received,) = sink.by_recipient()[address]
    text = mail_text(received)
    match = re.search(r"https://news\.example\.com(/confirm/\S+)", text)
    assert match, text
    return match.group(1)


# -- `newsletter serve` -------------------------------------------------------------------------


def served_config(tmp_path: Path, sink: SmtpSink, extra: str = "") -> tuple[int, str, Path]:
    """A free port, the site's URL on it, and an initialised config mailing over SMTP to `sink`
    (`extra` continues its [smtp] section)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n' + extra,
    )
    config.write_text(config.read_text().replace("https://news.example.com", url))
    run_cli(config, "init")
    return port, url, config


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    """`newsletter serve` as a user starts it, on a loopback port."""
    return start_cli(config, "serve", "--port", str(port))


def healthy(url: str) -> bool:
    """Does the site at `url` answer /healthz with 200 (within a second)?"""
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serving(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`newsletter serve` of `config` on `port`, up and healthy, stopped at the end (SIGTERM)."""
    proc = start_server(config, port)
    try:
        assert wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=30), (
            "newsletter serve did not come up"
        )
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# -- Debian's Chromium, through Playwright ------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, closed at the end of the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshots(tmp_path: Path, name: str) -> Path:
    """A new folder for a test's screenshots."""
    shots = tmp_path / name
    shots.mkdir()
    return shots


def keep_screenshots(shots: Path, under: str = "") -> None:
    """A copy of the screenshots under $NEWSLETTER_KEEP_SCREENSHOTS (/`under`), if it is set."""
    keep = os.environ.get("NEWSLETTER_KEEP_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, Path(keep) / under, dirs_exist_ok=True)

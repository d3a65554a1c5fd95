"""Fixtures with real parts: a feed server over HTTP, an SMTP server over TCP (aiosmtpd),
a SQLite file, and a fresh schema on the local PostgreSQL."""

from __future__ import annotations

import functools
import gzip
import io
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as SMTPSession
from flask import Flask
from flask.testing import FlaskClient

from newsletter.config import Settings, load_settings
from newsletter.operators import hash_password
from newsletter.store import Store
from newsletter.web import create_app

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("NEWSLETTER_REQUIRE_POSTGRES") == "1"
SECRET = "test-secret-key-0123456789abcdef"


# -- feeds over HTTP ----------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # "hang": say nothing for a while; "big": stream 10 MB; "bomb": 400 MB of gzip, gzip in under
    # 1 KB; "drip": the status line and headers one byte every half second
    behaviour: str = ""


@functools.cache
def gzip_bomb() -> bytes:
    """400 MB of zeros, gzipped twice: under 1 KB on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    inner = b"".join(packer.compress(block) for _ in range(400)) + packer.flush()
    return gzip.compress(inner, 9)


class FeedServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.behaviour == "hang":
                    server.release.wait(timeout=10)  # bounded: never holds a test run
                    return
                if route.behaviour == "bomb":
                    body = gzip_bomb()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/rss+xml")
                    self.send_header("Content-Encoding", "gzip, gzip")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if route.behaviour == "drip":
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nX-Padding: slow-slow\r\n"
                    try:
                        for byte in head:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            if server.release.wait(timeout=0.5):
                                return
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if route.behaviour == "big":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/rss+xml")
                    self.end_headers()
                    chunk = b"<!-- padding -->" * 4096
                    try:
                        for _ in range(10 * 1024 * 1024 // len(chunk) + 1):
                            self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                etag = route.headers.get("ETag")
                if etag and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(route.body)))
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


def rss(items: list[dict[str, Any]], *, title: str = "Test Feed") -> bytes:
    """An RSS 2.0 document; each item's keys: title, link, guid, description, author, date, category."""
    parts = []
    for it in items:
        xml = [f"<title>{it['title']}</title>", f"<link>{it['link']}</link>"]
        if "guid" in it:
            xml.append(f'<guid isPermaLink="false">{it["guid"]}</guid>')
        if "description" in it:
            xml.append(f"<description><![CDATA[{it['description']}]]></description>")
        if "author" in it:
            xml.append(f"<dc:creator>{it['author']}</dc:creator>")
        if "category" in it:
            xml.append(f"<category>{it['category']}</category>")
        if "image" in it:
            xml.append(f'<enclosure url="{it["image"]}" type="image/jpeg" length="1000"/>')
        if "date" in it:
            xml.append(f"<pubDate>{format_datetime(it['date'])}</pubDate>")
        parts.append("<item>" + "".join(xml) + "</item>")
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>'
        f"<title>{title}</title><link>https://example.com/</link><description>t</description>"
        + "".join(parts)
        + "</channel></rss>"
    ).encode()


def recent(hours: float = 1) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0)


# -- SMTP over TCP ------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class SmtpSink:
    """An aiosmtpd server on loopback that keeps every message; `mail_hook` may refuse senders,
    `rcpt_hook` recipients."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        # each returns a reply, or "drop" to close the connection instead of answering; the data
        # hook also "keep-drop": take the message, then close without a word (a lost 250)
        self.mail_hook: Callable[[str], str | None] | None = None
        self.rcpt_hook: Callable[[str], str | None] | None = None
        self.data_hook: Callable[[list[str]], str | None] | None = None
        self.connections = 0
        sink = self

        class Handler:
            async def handle_EHLO(  # noqa: N802
                self,
                server: SMTPServer,
                session: SMTPSession,
                envelope: SMTPEnvelope,
                hostname: str,
                responses: list[str],
            ) -> list[str]:
                with sink.lock:
                    sink.connections += 1
                session.host_name = hostname
                return responses

            async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
                self,
                server: SMTPServer,
                session: SMTPSession,
                envelope: SMTPEnvelope,
                address: str,
                mail_options: list[str],
            ) -> str:
                if sink.mail_hook and (reply := sink.mail_hook(address)):
                    return reply
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                return "250 OK"

            async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
                self,
                server: SMTPServer,
                session: SMTPSession,
                envelope: SMTPEnvelope,
                address: str,
                rcpt_options: list[str],
            ) -> str:
                if sink.rcpt_hook and (reply := sink.rcpt_hook(address)):
                    if reply == "drop":  # before the message: nothing can have been delivered
                        server.transport.close()
                        return "250 never heard"
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(  # noqa: N802
                self, server: SMTPServer, session: SMTPSession, envelope: SMTPEnvelope
            ) -> str:
                reply = sink.data_hook(list(envelope.rcpt_tos)) if sink.data_hook else None
                if reply and reply != "keep-drop":
                    if reply == "drop":  # after the final dot, the message not kept
                        server.transport.close()
                        return "250 never heard"
                    return reply
                with sink.lock:
                    sink.messages.append(
                        Received(
                            str(envelope.mail_from),
                            list(envelope.rcpt_tos),
                            bytes(envelope.original_content or b""),
                        )
                    )
                if reply == "keep-drop":  # delivered, and the 250 lost on the way back
                    server.transport.close()
                    return "250 never heard"
                return "250 Message accepted"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for m in self.messages:
            for r in m.rcpt_tos:
                out.setdefault(r, []).append(m)
        return out

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (Debian's openssl): (cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- configuration and databases ----------------------------------------------------------------


def write_config(
    folder: Path,
    *,
    sources: list[tuple[str, str]] | None = None,
    database_url: str | None = None,
    extra: str = "",
    delivery: str = 'transport = "outbox"',
) -> Path:
    """A config.toml in `folder`; sources are (name, url) pairs."""
    sources = sources or [("Sample Tech", str(ROOT / "samples/feeds/tech-news.xml"))]
    src = "".join(f'\n[[sources]]\nname = "{n}"\nurl = "{u}"\n' for n, u in sources)
    db = database_url or "sqlite:///subscribers.db"
    text = f"""
[newsletter]
name = "Test Digest"
sender = "Test Digest <digest@example.com>"
base_url = "https://news.example.com"
postal_address = "1 Test Street, Testville"
timezone = "UTC"

[database]
url = "{db}"

[delivery]
{delivery}
max_attempts = 3
{extra}
{src}
"""
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", SECRET)
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)


@pytest.fixture
def settings(tmp_path: Path, env: None) -> Settings:
    return load_settings(write_config(tmp_path))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'subscribers.db'}")
    store.migrate()
    yield store
    store.close()


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"PostgreSQL not reachable at {PG_URL}: {exc}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL for this test run, dropped at the end."""
    reason = _postgres_available()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"NEWSLETTER_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    import psycopg

    schema = f"nltest_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    store.migrate()
    with store.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(
            text(
                "TRUNCATE deliveries, stories, issues, subscribers, feed_states, senders, scheduled_runs, "
                "bounce_events, bounce_mails "
                "RESTART IDENTITY CASCADE"
            )
        )
    yield store
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Store:
    """The same test on a SQLite file and on the local PostgreSQL."""
    name = "sqlite_store" if request.param == "sqlite" else "postgres_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


# -- the command line as a user runs it ---------------------------------------------------------


def run_cli(
    config: Path,
    *args: str,
    timeout: float = 120,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NEWSLETTER_SECRET_KEY": SECRET, **(extra_env or {})}
    if not extra_env or "NEWSLETTER_DATABASE_URL" not in extra_env:
        environment.pop("NEWSLETTER_DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        input=input,
        cwd=config.parent,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start_cli(config: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A command as a user starts it, left running; its output and errors in one pipe."""
    environment = {**os.environ, "NEWSLETTER_SECRET_KEY": SECRET, **(extra_env or {})}
    environment.pop("NEWSLETTER_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=config.parent,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def assert_tally_counts(store: Store, issue_id: int) -> dict[str, int]:
    """The trigger-kept tally of an issue's deliveries says what counting every row says."""
    from sqlalchemy import func, select

    from newsletter.db.models import Delivery, DeliveryStatus, DeliveryTally

    with store.read() as s:
        by_status = select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id)
        counted = dict(s.execute(by_status.group_by(Delivery.status)).all())
        states = [st.value for st in DeliveryStatus]
        sums = s.execute(
            select(*(func.coalesce(func.sum(getattr(DeliveryTally, st)), 0) for st in states)).where(
                DeliveryTally.issue_id == issue_id
            )
        ).one()
    tallied = {st: int(n) for st, n in zip(states, sums, strict=True) if n}
    assert tallied == counted, (tallied, counted)
    return tallied


# -- the operator console ------------------------------------------------------------------------

PASSWORD = "correct horse battery"


@dataclass
class Console:
    app: Flask
    store: Store
    settings: Settings
    config: Path


@pytest.fixture
def console(tmp_path: Path, smtp_sink: SmtpSink, env: None) -> Iterator[Console]:
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"\nrate_per_second = 400',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\nconnections = 2\n',
    )
    settings = load_settings(config)
    store = Store(settings.database_url)
    store.migrate()
    store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    app = create_app(settings, store=store)
    yield Console(app, store, settings, config)
    assert app.extensions["newsletter"].confirmations.wait_idle()
    store.close()


def token(client: FlaskClient, path: str = "/admin/login") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def upload_csv(client: FlaskClient, data: bytes, filename: str = "list.csv") -> str:
    """The console's import of `data` by a logged-in client: the page it answers with."""
    return client.post(
        "/admin/subscribers/import",
        data={"file": (io.BytesIO(data), filename), "csrf_token": token(client, "/admin/subscribers")},
        content_type="multipart/form-data",
    ).get_data(as_text=True)


def log_in(client: FlaskClient, password: str = PASSWORD, name: str = "ed") -> int:
    csrf = token(client)
    return client.post(
        "/admin/login", data={"username": name, "password": password, "csrf_token": csrf}
    ).status_code

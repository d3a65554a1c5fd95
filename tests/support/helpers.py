"""What the tests share that is not a fixture: the real servers they talk to (a feed server over
HTTP, an SMTP sink over TCP), the config they write, and the command line as a user runs it."""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as SMTPSession
from flask import Flask
from flask.testing import FlaskClient

from newsletter.config import Settings
from newsletter.store import Store

ROOT = Path(__file__).resolve().parent.parent.parent
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


_ITEM_ELEMENTS = [
    ("guid", '<guid isPermaLink="false">{}</guid>'),
    ("description", "<description><![CDATA[{}]]></description>"),
    ("author", "<dc:creator>{}</dc:creator>"),
    ("category", "<category>{}</category>"),
    ("image", '<enclosure url="{}" type="image/jpeg" length="1000"/>'),
]


def rss(items: list[dict[str, Any]], *, title: str = "Test Feed") -> bytes:
    """An RSS 2.0 document; each item's keys: title, link, guid, description, author, date, category."""
    parts = []
    for it in items:
        xml = [f"<title>{it['title']}</title>", f"<link>{it['link']}</link>"]
        xml += [shape.format(it[key]) for key, shape in _ITEM_ELEMENTS if key in it]
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


# a story's HTML as a hostile feed sends it: a handler, a script, a style, a frame, a form,
# javascript: and data: links, tracking pixels, an image with a handler, an object
HOSTILE = """
<p onclick="steal()">Council approves the <b>new library</b> budget.</p>
<script>alert('x')</script><style>p{display:none}</style>
<iframe src="https://evil.example/frame">framed words</iframe>
<form action="https://evil.example/login"><input name="pw">Enter password</form>
<a href="javascript:alert(1)">click me</a> <a href="data:text/html,hi">data link</a>
<img src="https://track.example/p.gif" width="1" height="1">
<img src="https://track.example/q.gif" style="display:none">
<img src="https://img.example/library.jpg" onerror="alert(2)" width="600">
<object data="x.swf">obj</object>
"""


def recent(hours: float = 1) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0)


# -- SMTP over TCP ------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class Gate:
    """Holds the sink's answer to each message it applies to, once `after` messages are kept,
    until the test opens it: the sender is then mid-send for certain, for as long as the test
    needs, with no sleep to tune. `applies` sees the connection's number (1 for the sink's first)
    and the message's recipients; `reached` is set when the first message is held, and `held` has
    the numbers of the connections waiting."""

    after: int
    applies: Callable[[int, list[str]], bool] = lambda _connection, _rcpts: True
    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    held: set[int] = field(default_factory=set)  # the connections with a message held now


class SmtpSink:
    """An aiosmtpd server on loopback that keeps every message; `mail_hook` may refuse senders,
    `rcpt_hook` recipients; a `gate` holds answers until the test opens it."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        # each returns a reply, or "drop" to close the connection instead of answering; the data
        # hook also "keep-drop": take the message, then close without a word (a lost 250)
        self.mail_hook: Callable[[str], str | None] | None = None
        self.rcpt_hook: Callable[[str], str | None] | None = None
        self.data_hook: Callable[[list[str]], str | None] | None = None
        self.gate: Gate | None = None
        self.connections = 0
        self.numbers: dict[SMTPSession, int] = {}  # each session's connection number
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
                    sink.numbers.setdefault(session, sink.connections)
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
                await sink.held(session, list(envelope.rcpt_tos))
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

    async def held(self, session: SMTPSession, rcpts: list[str]) -> None:
        """Wait, without stopping the other connections, while the gate holds this message."""
        gate = self.gate
        if gate is None or gate.opened.is_set() or not gate.applies(self.numbers.get(session, 0), rcpts):
            return
        with self.lock:
            kept = len(self.messages)
        if kept >= gate.after:
            number = self.numbers.get(session, 0)
            with self.lock:
                gate.held.add(number)
            gate.reached.set()
            await asyncio.get_running_loop().run_in_executor(None, gate.opened.wait, 120)
            with self.lock:
                gate.held.discard(number)

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for m in self.messages:
            for r in m.rcpt_tos:
                out.setdefault(r, []).append(m)
        return out

    def close(self) -> None:
        if self.gate is not None:
            self.gate.opened.set()  # nothing held past the test
        self.controller.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- configuration and databases ----------------------------------------------------------------


def write_config(
    folder: Path,
    *,
    sources: Sequence[tuple[str, str] | tuple[str, str, str | None]] | None = None,
    database_url: str | None = None,
    extra: str = "",
    delivery: str = 'transport = "outbox"',
) -> Path:
    """A config.toml in `folder`; sources are (name, url) or (name, url, section)."""
    sources = sources or [("Sample Tech", str(ROOT / "samples/feeds/tech-news.xml"))]
    src = "".join(
        f'\n[[sources]]\nname = "{s[0]}"\nurl = "{s[1]}"\n'
        + (f'section = "{s[2]}"\n' if s[2:] and s[2] else "")
        for s in sources
    )
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


# -- the command line as a user runs it ---------------------------------------------------------


def cli_environment(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a command, with the tests' secret key, and without a
    database URL unless `extra_env` names one (the config's database, not the caller's)."""
    environment = {**os.environ, "NEWSLETTER_SECRET_KEY": SECRET, **(extra_env or {})}
    if "NEWSLETTER_DATABASE_URL" not in (extra_env or {}):
        environment.pop("NEWSLETTER_DATABASE_URL", None)
    return environment


def run_cli(
    config: Path,
    *args: str,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
    input: str | None = None,
    process: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`newsletter --config CONFIG ARGS...` as a user runs it, in the config's folder: its exit
    code, standard output and standard error. In this process by default (click's own runner: the
    same command, its output and its exit code, without a second of interpreter start-up); with
    `process=True` a real `python -m newsletter.cli` process, for what only a process shows (what
    it imports, its exit code as the shell sees it). `timeout` bounds the process alone."""
    if process:
        proc = subprocess.run(
            [sys.executable, "-m", "newsletter.cli", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_environment(extra_env),
            input=input,
            cwd=config.parent,
        )
    else:
        proc = _cli_in_process(config, args, extra_env or {}, input)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _cli_in_process(
    config: Path, args: tuple[str, ...], extra_env: dict[str, str], input: str | None
) -> subprocess.CompletedProcess[str]:
    from click.testing import CliRunner

    from newsletter.cli import main

    environment: dict[str, str | None] = {"NEWSLETTER_SECRET_KEY": SECRET, **extra_env}
    environment.setdefault("NEWSLETTER_DATABASE_URL", None)  # unset: the config's database
    folder = os.getcwd()
    os.chdir(config.parent)
    try:
        result = CliRunner().invoke(
            main, ["--config", str(config), *args], input=input, env=environment, prog_name="newsletter"
        )
    finally:
        os.chdir(folder)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what Python prints for an exception nobody caught, as the process would
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["newsletter", *args], result.exit_code, result.stdout, stderr)


STARTED: list[subprocess.Popen[Any]] = []  # the commands this test started (conftest stops what is left)

_P = TypeVar("_P", bound="subprocess.Popen[Any]")


def _started(proc: _P) -> _P:
    STARTED.append(proc)
    return proc


def start_cli(config: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A command as a user starts it, left running; its output and errors in one pipe."""
    return _started(
        subprocess.Popen(
            [sys.executable, "-m", "newsletter.cli", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=cli_environment(extra_env),
            cwd=config.parent,
        )
    )


def start_command(config: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A command as a user starts it, left running; its output and its errors apart, as text."""
    return _started(
        subprocess.Popen(
            [sys.executable, "-m", "newsletter.cli", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_environment(extra_env),
            cwd=config.parent,
        )
    )


class Lines:
    """What a running process writes to a pipe, read line by line on a thread as it comes, so that
    a test can wait for a line instead of sleeping (and nothing blocks on a full pipe)."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe: IO[str]) -> None:
        with pipe:
            for line in pipe:
                self.lines.append(line)

    def saying(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def text(self, timeout: float = 10) -> str:
        """All of it, once the pipe has closed (the process has ended)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipe is still open"
        return "".join(self.lines)


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

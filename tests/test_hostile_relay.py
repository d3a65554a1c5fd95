"""A hostile or intercepted relay (tests/hostile_relay.py: a raw socket server on 127.0.0.1) can
neither grow the sender's memory nor hold it past `[smtp] timeout_seconds` for one reply: not the
transport, not `newsletter send` (its worker processes included), not a signup's confirmation."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from newsletter.config import load_settings
from newsletter.db.models import Delivery, DeliveryStatus
from newsletter.delivery.transport import (
    REPLY_BYTES,
    REPLY_LINE_OCTETS,
    REPLY_LINES,
    Envelope,
    SmtpTransport,
)
from newsletter.errors import TransportError
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber
from newsletter.web import create_app

from .conftest import free_port, start_cli, wait_for, write_config
from .hostile_relay import HostileRelay, Peer, Script, converse, refuse, tls_server_context
from .test_web_server import _healthy, start_server

MESSAGE = b"From: a@example.com\r\nTo: r@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
TIMEOUT = 2.0  # [smtp] timeout_seconds in these tests
MARGIN = 1.5  # what a loaded machine may add to it
DRIP_EVERY = 0.4  # a byte this often: well inside the timeout, so only one deadline a command ends it
DRIP_FOR = 8.0  # the dripping stops after this long: a client that waits for it fails the tests
GROWTH_MB = 50  # the peak memory a flood may add


@pytest.fixture
def relays() -> Iterator[Callable[..., HostileRelay]]:
    """Start a hostile relay: its first connection meets the script, later ones (a sender's
    retries) `later`, by default a quick 554, so a test spends its time on the first only."""
    started: list[HostileRelay] = []

    def start(script: Script, later: Script = refuse) -> HostileRelay:
        relay = HostileRelay(script, later=later)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.close()


def drip_forever(peer: Peer, head: bytes = b"220-") -> None:
    peer.drip(head + b"slow " * 1000, every=DRIP_EVERY, seconds=DRIP_FOR)


# -- the transport ------------------------------------------------------------------------------


def lines(count: int, code: bytes = b"220", width: int = 60, *, last: bool = True) -> bytes:
    """`count` reply lines of `width` octets; the last one ends the reply unless `last` is False."""
    text = b"x" * (width - 6)
    return b"".join(
        code + (b"-" if i < count - 1 or not last else b" ") + text + b"\r\n" for i in range(count)
    )


def test_a_greeting_over_the_caps_ends_the_session_with_a_clear_error(
    relays: Callable[..., HostileRelay],
) -> None:
    cases: list[tuple[Script, str]] = [
        (lambda p: p.flood(), f"more than {REPLY_LINES} lines"),
        (lambda p: p.say(b"220-" + b"x" * 100_000), f"longer than {REPLY_LINE_OCTETS} octets"),
        (
            lambda p: p.say(lines(REPLY_LINES - 1, width=REPLY_LINE_OCTETS)),
            f"more than {REPLY_BYTES // 1024} KB",
        ),
    ]
    for script, error in cases:
        relay = relays(script)
        t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
        with pytest.raises(TransportError, match=f"cannot connect to the SMTP server .*: .*{error}"):
            t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
        assert not t.connected
        held = relay.first_hold()
        assert held is not None and held < MARGIN  # it left at once, without waiting for a timeout
        # the endless one was read no further than the caps: what the kernel's buffers took, at most
        assert sum(relay.sent) < 16 * 1024 * 1024


def test_a_reply_at_the_caps_is_taken(relays: Callable[..., HostileRelay]) -> None:
    """A server with a long EHLO list or long lines is no enemy: exactly the caps still work."""
    big_ehlo = lines(REPLY_LINES - 1, code=b"250", width=REPLY_BYTES // REPLY_LINES - 1, last=False)
    widest = b"250 " + b"y" * (REPLY_LINE_OCTETS - 6) + b"\r\n"

    def script(peer: Peer) -> None:
        converse(
            peer,
            greeting=lines(REPLY_LINES),  # exactly the most lines
            ehlo=big_ehlo + b"250 PIPELINING\r\n",
            after_dot=lambda p: p.say(widest),  # a line of exactly the most octets
        )

    relay = relays(script)
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    result = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    t.close()
    assert result.status == DeliveryStatus.SENT and result.reply.startswith("250 yyy")
    assert "PIPELINING" in t.extensions


@pytest.mark.parametrize(
    ("stage", "status"),
    [("RCPT", DeliveryStatus.DEFERRED), ("DATA", DeliveryStatus.UNKNOWN)],
)
def test_a_reply_over_the_caps_mid_session_drops_it_deferred_before_the_dot_unknown_after(
    relays: Callable[..., HostileRelay], stage: str, status: DeliveryStatus
) -> None:
    def script(peer: Peer) -> None:
        converse(peer, **({"at": {b"RCPT": Peer.flood}} if stage == "RCPT" else {"after_dot": Peer.flood}))

    relay = relays(script)
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    result = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    assert result.status == status and f"more than {REPLY_LINES} lines" in result.reply
    assert not t.connected
    held = relay.first_hold()
    assert held is not None and held < MARGIN


# -- newsletter send ----------------------------------------------------------------------------


def relay_config(tmp_path: Path, port: int, security: str, *, processes: int = 1) -> tuple[Path, Store]:
    """A config mailing through the relay on `port` with `timeout_seconds = TIMEOUT` (as many sender
    processes as connections; 1: the connection is a thread of the sending process), and its
    database, ready."""
    config = write_config(
        tmp_path,
        delivery=f'transport = "smtp"\nprocesses = {processes}',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "{security}"\n'
        f"connections = {processes}\ntimeout_seconds = {TIMEOUT}\n",
    )
    store = Store(load_settings(config).database_url)
    store.migrate()
    return config, store


def send_setup(tmp_path: Path, port: int, security: str, *, processes: int) -> tuple[Path, Store, int]:
    """A relay's config (relay_config), one active subscriber and an issue."""
    config, store = relay_config(tmp_path, port, security, processes=processes)
    now = datetime.now(UTC)
    store.import_subscribers([NewSubscriber("reader@example.com", "Reader")], now=now)
    issue = store.create_issue(
        now.date(),
        story_ids=[],
        content=lambda i: ("Today", "", "<p>hi</p>", "hi\n"),
        placeholder_key=None,
        now=now,
    )
    assert issue is not None
    return config, store, issue.id


def last_reply(store: Store, issue_id: int) -> tuple[str, str]:
    with store.read() as s:
        row = s.execute(
            select(Delivery.status, Delivery.last_reply).where(Delivery.issue_id == issue_id)
        ).one()
    return str(row[0]), row[1] or ""


def peak_kb(pid: int) -> dict[int, int]:
    """The peak resident set (VmHWM, KB) of a process and of each of its children."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry.name) == pid or fields.get("PPid", "").strip() == str(pid):
            found[int(entry.name)] = int(fields["VmHWM"].split()[0])
    return found


class Flood:
    """A relay whose greeting never ends; the test reads the client's peak memory when it connects
    (before a byte is sent) and after it left."""

    def __init__(self, relays: Callable[..., HostileRelay]) -> None:
        self.connected = threading.Event()
        self.measured = threading.Event()
        self.relay = relays(self.script, later=self.script)  # a retry meets the same

    def script(self, peer: Peer) -> None:
        self.connected.set()
        self.measured.wait(10)
        peer.mark()
        peer.flood()

    def growth_mb(self, pid: int) -> tuple[float, float | None]:
        """The most any process of `pid`'s tree grew its peak, and how long the client held on."""
        assert self.connected.wait(30), "the client never connected"
        before = peak_kb(pid)
        self.measured.set()
        held = self.relay.first_hold()
        after = peak_kb(pid)
        return max(after.get(p, kb) - kb for p, kb in before.items()) / 1024, held


def stop(proc: subprocess.Popen[bytes]) -> str:
    """Stop a command as Ctrl-C would (SIGTERM), and what it said."""
    proc.send_signal(signal.SIGTERM)
    try:
        output = proc.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate()[0]
    return output.decode("utf-8", "replace")


@pytest.mark.parametrize("security", ["none", "starttls"])
def test_an_endless_greeting_leaves_send_memory_bounded(
    tmp_path: Path, env: None, relays: Callable[..., HostileRelay], security: str
) -> None:
    """`newsletter send` gives up at the caps (the greeting comes before TLS with starttls too),
    in its sender processes as in its own."""
    flood = Flood(relays)
    config, store, issue_id = send_setup(tmp_path, flood.relay.port, security, processes=2)
    proc = start_cli(config, "send", "--issue", str(issue_id))
    try:
        growth, held = flood.growth_mb(proc.pid)
        assert wait_for(lambda: "cannot connect" in last_reply(store, issue_id)[1])
    finally:
        output = stop(proc)
    status, reply = last_reply(store, issue_id)
    assert f"more than {REPLY_LINES} lines" in reply, (reply, output)
    assert status in ("pending", "deferred")  # never on the wire: sent by a later send
    assert growth < GROWTH_MB, f"peak memory grew {growth:.0f} MB"
    assert held is not None and held < MARGIN
    store.close()


DRIPS = ["greeting", "after the final dot", "EHLO after STARTTLS"]


def dripping(where: str, certificate: tuple[Path, Path]) -> tuple[Script, str]:
    """A relay that drips the reply named by `where` (one of DRIPS), and the security to set."""
    if where == "greeting":
        return drip_forever, "none"
    if where == "after the final dot":
        return lambda p: converse(p, after_dot=lambda q: drip_forever(q, b"250-")), "none"
    tls = tls_server_context(certificate)
    return lambda p: converse(p, tls=tls, after_tls=drip_forever), "starttls"


@pytest.mark.parametrize("where", DRIPS)
def test_a_dripping_relay_holds_send_no_longer_than_the_timeout(
    tmp_path: Path,
    env: None,
    relays: Callable[..., HostileRelay],
    certificate: tuple[Path, Path],
    where: str,
) -> None:
    script, security = dripping(where, certificate)
    relay = relays(script)
    config, store, issue_id = send_setup(tmp_path, relay.port, security, processes=1)
    trust = {"SSL_CERT_FILE": str(certificate[0])}  # the relay's certificate
    proc = start_cli(config, "send", "--issue", str(issue_id), extra_env=trust)
    try:
        held = relay.first_hold(timeout=DRIP_FOR + 10)
        assert wait_for(lambda: "within" in last_reply(store, issue_id)[1])
    finally:
        output = stop(proc)
    status, reply = last_reply(store, issue_id)
    assert held is not None and held < TIMEOUT + MARGIN, f"held {held} s with timeout_seconds = {TIMEOUT}"
    assert f"no reply within {TIMEOUT:g} seconds" in reply, (reply, output)
    if where == "after the final dot":  # it may have been taken: the lost-reply rule
        assert status == "unknown" and "it may be delivered" in reply
    else:
        assert status in ("pending", "deferred")
    store.close()


# -- a signup's confirmation mail ---------------------------------------------------------------


@pytest.mark.parametrize("where", DRIPS)
def test_a_dripping_relay_holds_a_confirmation_no_longer_than_the_timeout(
    tmp_path: Path,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    relays: Callable[..., HostileRelay],
    certificate: tuple[Path, Path],
    where: str,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # the relay's certificate is trusted
    script, security = dripping(where, certificate)
    relay = relays(script)
    config, store = relay_config(tmp_path, relay.port, security)
    app = create_app(load_settings(config), store=store)
    client = app.test_client()
    assert client.post("/subscribe", data={"email": "slow@example.com"}).status_code == 200
    held = relay.first_hold(timeout=DRIP_FOR + 10)
    mailer = app.extensions["newsletter"].confirmations
    assert mailer.wait_idle(DRIP_FOR + 10)
    assert held is not None and held < TIMEOUT + MARGIN, f"held {held} s with timeout_seconds = {TIMEOUT}"
    # a session that failed: the relay is down for everyone a while, and nothing was recorded sent
    assert client.post("/subscribe", data={"email": "next@example.com"}).status_code == 503
    sub = store.get_subscriber("slow@example.com")
    assert sub is not None and sub.confirm_sent_at is None
    store.close()


def test_an_endless_greeting_leaves_serve_memory_bounded(
    tmp_path: Path, env: None, relays: Callable[..., HostileRelay]
) -> None:
    """`newsletter serve`: a signup's confirmation against a relay whose greeting never ends (before
    TLS: starttls is configured) costs the server no memory it keeps, and the site stays up."""
    flood = Flood(relays)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config, store = relay_config(tmp_path, flood.relay.port, "starttls")
    store.close()
    config.write_text(config.read_text().replace("https://news.example.com", url))
    proc = start_server(config, port)
    try:
        assert wait_for(lambda: _healthy(url), timeout=30), "newsletter serve did not come up"
        assert httpx.post(f"{url}/subscribe", data={"email": "flooded@example.com"}).status_code == 200
        growth, held = flood.growth_mb(proc.pid)
        assert held is not None and held < MARGIN
        assert wait_for(
            lambda: httpx.post(f"{url}/subscribe", data={"email": "x@example.com"}).status_code == 503
        )
        assert _healthy(url)
    finally:
        log = stop(proc)
    assert growth < GROWTH_MB, f"peak memory grew {growth:.0f} MB"
    assert f"more than {REPLY_LINES} lines" in log

"""A hostile or intercepted relay (tests/support/hostile_relay.py: a raw socket server on 127.0.0.1) can
neither grow the sender's memory nor hold it past `[smtp] timeout_seconds` for one reply: not the
transport, not `newsletter send` (its worker processes included), not a signup's confirmation."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
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
    STEP_TIMEOUTS,
    Envelope,
    SmtpTransport,
)
from newsletter.errors import TransportError
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber
from newsletter.web import create_app

from ..support.helpers import free_port, start_cli, wait_for, write_config
from ..support.hostile_relay import Gone, HostileRelay, Peer, Script, converse, refuse, tls_server_context
from ..support.web import healthy, start_server

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


# -- replies out of place, malformed, or just in time ------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_2xx_to_data_ends_the_session_and_the_message_is_deferred_not_sent(
    relays: Callable[..., HostileRelay], pipelining: bool
) -> None:
    """A 250 where the relay should say 354 "go ahead": no message went on the wire."""
    ehlo = b"250-relay.example\r\n250 PIPELINING\r\n" if pipelining else b"250 relay.example\r\n"
    relay = relays(
        lambda p: converse(p, ehlo=ehlo, at={b"DATA": lambda q: q.say(b"250 2.0.0 not really\r\n")})
    )
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    result = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    assert result.status == DeliveryStatus.DEFERRED and result.stage == "DATA"
    assert "session dropped: the server answered DATA with 250" in result.reply
    assert not t.connected


@pytest.mark.parametrize("late", [False, True], ids=["buffered", "still on the way"])
def test_replies_nobody_asked_for_end_the_session_and_never_pass_for_an_answer(
    relays: Callable[..., HostileRelay], late: bool
) -> None:
    """A relay that follows each message's 250 with two more: whether they came with it (in the
    client's buffer) or a moment later, no message is recorded sent that the relay did not take."""
    taken: list[int] = []
    answered, surplus_sent = threading.Event(), threading.Event()

    def after_dot(peer: Peer) -> None:
        taken.append(1)
        surplus = b"250 2.0.0 bonus\r\n250 2.0.0 bonus\r\n"
        peer.say(b"250 2.0.0 queued\r\n" + (b"" if late else surplus))
        if late:  # once the client has taken the 250 as its answer
            answered.wait(timeout=10)
            answered.clear()
            peer.say(surplus)
        surplus_sent.set()

    def script(peer: Peer) -> None:
        converse(peer, after_dot=after_dot)

    relay = relays(script, later=script)
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    results = []
    for i in range(4):
        result = t.send(Envelope("b@example.com", f"r{i}@example.com", "k"), MESSAGE)
        results.append(result)
        if result.status == DeliveryStatus.SENT:  # the surplus comes now, before the next message
            answered.set()
            assert surplus_sent.wait(timeout=10)
            surplus_sent.clear()
    t.close()
    sent = [r for r in results if r.status == DeliveryStatus.SENT]
    assert len(sent) == len(taken) == 2, results
    assert [r.status for r in results[1::2]] == [DeliveryStatus.DEFERRED] * 2
    assert all("session dropped" in r.reply for r in results[1::2])


def hang_up(peer: Peer) -> None:
    raise Gone


@pytest.mark.parametrize(
    "greeting",
    [
        b"550-no\r\n220 yes\r\n",
        b"+22 hi\r\n",
        b" 220 hi\r\n",
        b"22 hi\r\n",
        b"2200 hi\r\n",
        b"220x hi\r\n",
        b"120 hi\r\n",
        b"620 hi\r\n",
        b"220\rhi\r\n",
        b"220-part\r\n220 hal",  # and the server hangs up mid-line
    ],
)
def test_a_malformed_greeting_is_a_clear_error(relays: Callable[..., HostileRelay], greeting: bytes) -> None:
    """A reply is a code from 200 to 599, the same on each of its lines, then a space, a dash or
    the line's end; a line ends with LF."""

    def script(peer: Peer) -> None:
        peer.say(greeting)
        if not greeting.endswith(b"\n"):
            hang_up(peer)

    relay = relays(script)
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    with pytest.raises(
        TransportError, match="cannot connect .*: (not an SMTP reply|a reply whose lines|the server closed)"
    ):
        t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    assert not t.connected


@pytest.mark.parametrize(
    "reply",
    [b"+55 no\r\n", b" 55 no\r\n", b"55\r\n", b"5500 no\r\n", b"250-yes\r\n550 no\r\n", b"354 go on\r\n"],
)
def test_a_malformed_or_misplaced_reply_to_rcpt_bounces_nobody(
    relays: Callable[..., HostileRelay], reply: bytes
) -> None:
    """Read as a 5xx, it would mark the reader bounced for good: it ends the session instead."""
    relay = relays(lambda p: converse(p, at={b"RCPT": lambda q: q.say(reply)}))
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    result = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    assert result.status == DeliveryStatus.DEFERRED and "session dropped" in result.reply, result
    assert result.stage == "RCPT" and not t.connected


def wait_for_the_client_to_leave(peer: Peer) -> None:
    peer.left(DRIP_FOR)


@pytest.mark.parametrize(
    ("verb", "script", "own_failure"),
    [
        (b"MAIL", wait_for_the_client_to_leave, False),
        (b"RCPT", wait_for_the_client_to_leave, True),  # checking the address took too long
        (b"RCPT", hang_up, False),
        (b"DATA", wait_for_the_client_to_leave, False),
    ],
)
def test_a_failed_session_names_the_command_whose_reply_it_awaited(
    relays: Callable[..., HostileRelay], verb: bytes, script: Script, own_failure: bool
) -> None:
    """Only a recipient the relay could not check in time is that message's own failure; no reply
    to MAIL or DATA, or a session that drops, is the relay's."""
    relay = relays(lambda p: converse(p, at={verb: script}))
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=TIMEOUT)
    result = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    timed_out = script is wait_for_the_client_to_leave
    assert result.status == DeliveryStatus.DEFERRED and result.stage == verb.decode()
    assert result.timed_out is timed_out and result.own_failure is own_failure


JUST_IN_TIME = 1.1  # every reply this long after its command: inside the timeout below, every time
STEP_TIMEOUT = 1.5  # timeout_seconds in these tests: the setup and each message get STEP_TIMEOUTS x


def just_in_time(ehlo: bytes, at: dict[bytes, Script] | None = None) -> Script:
    def script(peer: Peer) -> None:
        peer.pause = JUST_IN_TIME
        converse(peer, ehlo=ehlo, at=at)

    return script


def test_a_relay_that_answers_each_command_just_in_time_holds_a_message_no_longer_than_its_deadline(
    relays: Callable[..., HostileRelay],
) -> None:
    """MAIL, RCPT and DATA one at a time (no PIPELINING), each answered inside the timeout: the
    message is given up at its deadline, before its 354, so it is deferred."""
    relay = relays(just_in_time(b"250-relay.example\r\n250 8BITMIME\r\n"))
    t = SmtpTransport("127.0.0.1", relay.port, security="none", timeout=STEP_TIMEOUT)
    t.open()  # the greeting and EHLO: inside the setup's deadline
    started = time.monotonic()
    result = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    held = time.monotonic() - started
    limit = STEP_TIMEOUTS * STEP_TIMEOUT
    assert result.status == DeliveryStatus.DEFERRED and result.stage == "DATA", result
    assert f"the message took more than {limit:g} seconds" in result.reply
    assert held < limit + MARGIN and not t.connected


def test_a_relay_that_answers_each_command_just_in_time_holds_the_setup_no_longer_than_its_deadline(
    relays: Callable[..., HostileRelay],
) -> None:
    """The greeting, EHLO and AUTH each inside the timeout: the setup is given up at its deadline."""
    auth = {b"AUTH": lambda p: p.say(b"235 2.7.0 ok\r\n")}
    relay = relays(just_in_time(b"250-relay.example\r\n250 AUTH PLAIN\r\n", auth))
    t = SmtpTransport(
        "127.0.0.1", relay.port, security="none", timeout=STEP_TIMEOUT, username="u", password="p"
    )
    limit = STEP_TIMEOUTS * STEP_TIMEOUT
    started = time.monotonic()
    with pytest.raises(TransportError, match=f"the session's setup took more than {limit:g} seconds"):
        t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    assert time.monotonic() - started < limit + MARGIN and not t.connected


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
        assert wait_for(lambda: healthy(url), timeout=30), "newsletter serve did not come up"
        assert httpx.post(f"{url}/subscribe", data={"email": "flooded@example.com"}).status_code == 200
        growth, held = flood.growth_mb(proc.pid)
        assert held is not None and held < MARGIN
        assert wait_for(
            lambda: httpx.post(f"{url}/subscribe", data={"email": "x@example.com"}).status_code == 503
        )
        assert healthy(url)
    finally:
        log = stop(proc)
    assert growth < GROWTH_MB, f"peak memory grew {growth:.0f} MB"
    assert f"more than {REPLY_LINES} lines" in log

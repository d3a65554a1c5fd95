"""`newsletter serve` (a real waitress subprocess on a loopback port) against what a stranger can
send it: huge bodies, slow headers, lone surrogates, a CR/LF in `next=`, a forged Host header."""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..support.helpers import SmtpSink, cli_environment, run_cli, wait_for
from ..support.web import healthy, served_config, start_server


@dataclass
class Running:
    url: str
    port: int
    config: Path
    proc: subprocess.Popen[bytes]


@contextmanager
def up(proc: subprocess.Popen[bytes], port: int, config: Path) -> Iterator[Running]:
    """The server `proc` started on `port`, once it answers; stopped (SIGTERM) at the end."""
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: healthy(url), timeout=30), "the server did not come up"
        yield Running(url, port, config, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture
def running(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Running]:
    port, _, config = served_config(tmp_path, smtp_sink)
    with up(start_server(config, port), port, config) as server:
        yield server


WITH_LIMITS = """
import json
import sys
from pathlib import Path
from newsletter.config import load_settings
from newsletter.web import create_app
from newsletter.web.server import Limits, create_server

limits = Limits(**json.loads(sys.argv[3]))
create_server(create_app(load_settings(Path(sys.argv[1]))), "127.0.0.1", int(sys.argv[2]), limits).run()
"""


@contextmanager
def limited(tmp_path: Path, sink: SmtpSink, **limits: float) -> Iterator[Running]:
    """serve's own server (newsletter.web.server, the app serve runs) with `limits` instead of
    serve's, for a test of a limit that takes seconds to reach at serve's values."""
    port, _, config = served_config(tmp_path, sink)
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_LIMITS, str(config), str(port), json.dumps(limits)],
        env=cli_environment(),
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    with up(proc, port, config) as server:
        yield server


def buffered_on_disk(pid: int) -> int:
    """Bytes in the deleted temporary files the process holds open (waitress's body buffers)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).endswith(" (deleted)"):
                total += os.stat(fd).st_size
        except OSError:
            pass  # closed meanwhile
    return total


def send_huge_body(
    running: Running, head: bytes, *, piece: bytes = b"x" * 65536, seconds: float = 4.0
) -> tuple[int, int, bytes]:
    """Send `head`, then a body `piece` by piece every 5 ms (no faster than the server takes it)
    until the server answers or closes, or `seconds` pass. (bytes of body sent, the most the
    server held in temporary files meanwhile, the answer)."""
    sent, on_disk, answer = 0, 0, b""
    with socket.create_connection(("127.0.0.1", running.port)) as peer:
        peer.sendall(head)
        peer.setblocking(False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([peer], [peer], [], 0.2)
            if readable:
                try:
                    data = peer.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
                continue
            if writable:
                try:
                    sent += peer.send(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
            on_disk = max(on_disk, buffered_on_disk(running.proc.pid))
            time.sleep(0.005)
        on_disk = max(on_disk, buffered_on_disk(running.proc.pid))
        peer.setblocking(True)
        peer.settimeout(2)
        try:
            while chunk := peer.recv(65536):
                answer += chunk
        except (OSError, TimeoutError):
            pass
    return sent, on_disk, answer


def head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


HUGE = [
    ("/subscribe", ""),
    ("/subscribe", "Expect: 100-continue\r\n"),  # as curl sends a large body
    ("/unsubscribe/x.y", ""),
    ("/admin/subscribers/import", ""),  # the import's own route, but a stranger has no session
    ("/admin/subscribers/import", 'Cookie: newsletter_session={"_user_id": "1:0"}.aaaa.bbbb\r\n'),
]


def test_a_300_mb_body_is_refused_before_it_is_read(running: Running) -> None:
    for path, extra in HUGE:
        sent, on_disk, answer = send_huge_body(running, head(path, 300_000_000, extra))
        print(f"{path} {extra.strip()}: {sent:,} bytes sent before the answer, {on_disk:,} on disk")
        assert answer.startswith(b"HTTP/1.1 413 "), (path, extra, answer[:200])
        assert on_disk == 0, (path, extra)
        # no more than the socket buffers hold on loopback: the answer came after the head
        assert sent < 8 * 1024 * 1024, (path, extra)
    chunked = head("/subscribe", 0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    sent, on_disk, answer = send_huge_body(running, chunked, piece=b"2000\r\n" + b"x" * 8192 + b"\r\n")
    print(f"/subscribe chunked: {sent:,} bytes sent before the answer, {on_disk:,} on disk")
    assert answer.startswith(b"HTTP/1.1 413 ") and on_disk == 0, answer[:200]
    assert healthy(running.url)


def test_a_body_over_64_kb_on_a_public_route_is_refused_as_soon_as_its_length_is_known(
    running: Running,
) -> None:
    """Not read into a buffer first: the answer comes before a byte of the body is sent."""
    for path in ("/subscribe", "/unsubscribe/x.y", "/admin/login"):
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as peer:
            peer.sendall(head(path, 64 * 1024 + 1))
            answer = peer.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413 "), (path, answer[:200])
    small = httpx.post(f"{running.url}/subscribe", data={"email": "ok@example.org"})
    assert small.status_code == 200


def test_slow_requests_are_dropped_at_the_deadline_and_healthz_is_answered_meanwhile(
    running: Running,
) -> None:
    """110 connections that each send one header line every 2 s (more than waitress's default
    100 connections), and 10 that send a small body as slowly: /healthz is still answered, and
    each slow one is closed by the deadline for a request (its head within 10 s, a 1 KB body in
    no time more), not held while it keeps trickling. They come from three addresses (one may
    hold only 50), /healthz from a fourth."""
    slow: list[socket.socket] = []
    try:
        for i in range(120):
            peer = socket.create_connection(
                ("127.0.0.1", running.port), source_address=(f"127.0.0.{2 + i % 3}", 0)
            )
            if i < 110:
                peer.sendall(b"GET /archive HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                peer.sendall(head("/subscribe", 1024) + b"email=")
            slow.append(peer)
        started = time.monotonic()
        open_ = set(slow)
        waits: list[float] = []
        n = 0
        while open_ and time.monotonic() - started < 16:  # a safety deadline: 10 s + the check
            asked = time.monotonic()
            try:
                answered = httpx.get(f"{running.url}/healthz", timeout=5).status_code
            except httpx.TimeoutException:
                answered = 0
            waits.append(time.monotonic() - asked)
            assert answered == 200, f"/healthz not answered under the slow load: waited {waits[-1]:.1f} s"
            n += 1
            for peer in list(open_):
                try:
                    peer.sendall(f"X-Slow-{n}: {n}\r\n".encode() if peer in slow[:110] else b"x")
                except OSError:
                    open_.discard(peer)
            readable, _, _ = select.select(list(open_), [], [], 2)
            for peer in readable:
                try:
                    if not peer.recv(4096):
                        open_.discard(peer)
                except OSError:
                    open_.discard(peer)
        held = time.monotonic() - started
    finally:
        for peer in slow:
            peer.close()
    print(
        f"/healthz under 110 slow-header and 10 slow-body connections: worst {max(waits):.3f} s "
        f"over {len(waits)} tries; the slow ones all closed after {held:.1f} s"
    )
    assert not open_, f"{len(open_)} slow connections still open after {held:.1f} s"
    assert held >= 9  # each had its 10 s (a second of slack for the server's clock tick)


def log_in(client: httpx.Client, query: str = "") -> httpx.Response:
    """The console's login form, filled in as a browser does, as operator `ed`."""
    form = client.get("/admin/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    login = {"username": "ed", "password": "a long enough password", "csrf_token": csrf}
    return client.post(f"/admin/login{query}", data=login)


def test_the_console_imports_a_csv_far_over_64_kb(running: Running) -> None:
    rows = "".join(f"reader{i}@example.org,Reader Number {i}\n" for i in range(5000))
    csv_bytes = ("email,name\n" + rows).encode()
    assert len(csv_bytes) > 3 * 64 * 1024
    run_cli(running.config, "admin", "add-user", "ed", input="a long enough password\n")
    with httpx.Client(base_url=running.url, timeout=60) as client:
        assert log_in(client).status_code == 302
        page = client.get("/admin/subscribers").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        imported = client.post(
            "/admin/subscribers/import",
            data={"csrf_token": csrf},
            files={"file": ("readers.csv", csv_bytes, "text/csv")},
        )
    assert imported.status_code == 200, imported.text[:500]
    assert "5000 added" in imported.text
    counts = json.loads(run_cli(running.config, "status", "--json").stdout)
    assert counts["subscribers"] == {"active": 5000}


SURROGATES = [
    b'{"email": "\\ud800@x.org"}',
    b'{"email": "a@x.org\\udfff"}',
    b'{"email": "a@x.org", "name": "\\ud800"}',
    b'{"email": "a@x.org", "name": "Ann \\udc80"}',
    b'{"email": "a@x.org", "\\ud800": "x"}',
]


def test_a_lone_surrogate_in_a_json_field_is_400(running: Running) -> None:
    for body in SURROGATES:
        for accept in ("application/json", "text/html"):
            answer = httpx.post(
                f"{running.url}/subscribe",
                content=body,
                headers={"Content-Type": "application/json", "Accept": accept},
            )
            assert answer.status_code == 400, (body, accept, answer.text[:300])
    listed = json.loads(run_cli(running.config, "subscribers", "list", "--json").stdout)
    assert listed == {"subscribers": []}


HOSTILE_NEXT = [
    "/admin/%0d%0aSet-Cookie:x=1",
    "/admin/%0aLocation:%20https://evil.example/",
    "/admin/%00",
    "/admin/%5C%5Cevil.example",
    "/admin%09//evil.example",
    "//evil.example/admin/",
]


def test_a_hostile_next_after_login_redirects_within_the_console(running: Running) -> None:
    run_cli(running.config, "admin", "add-user", "ed", input="a long enough password\n")
    for target, expected in [(t, "/admin/") for t in HOSTILE_NEXT] + [
        ("/admin/subscribers%3Fq%3Dann", "/admin/subscribers?q=ann")  # a safe one is followed
    ]:
        with httpx.Client(base_url=running.url) as client:
            answer = log_in(client, f"?next={target}")
            assert answer.status_code == 302, (target, answer.text[:300])
            assert answer.headers["location"] == expected, (target, answer.headers["location"])
            assert "x" not in client.cookies


def test_the_embed_snippet_names_base_url_whatever_the_host_header(running: Running) -> None:
    for host in ("evil.example", "evil.example:8000", "127.0.0.1:1"):
        page = httpx.get(f"{running.url}/", headers={"Host": host}).text
        assert f'action="{running.url}/subscribe"' in page
        assert "evil.example" not in page and "127.0.0.1:1/" not in page
    answered = httpx.post(
        f"{running.url}/subscribe", data={"email": "not an address"}, headers={"Host": "evil.example"}
    )
    assert answered.status_code == 400 and f'action="{running.url}/subscribe"' in answered.text
    assert "evil.example" not in answered.text


# -- issue 19, round two: what an outside attacker found in the limits above ----------------------


def read_answer(peer: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP answer from `peer`: (status line, headers by lower-case name, body); b"" if the
    server closed (or reset) the connection before one came."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = peer.recv(65536)
            if not chunk:
                return b"", {}, b""
            data += chunk
        head_part, _, body = data.partition(b"\r\n\r\n")
        status, *lines = head_part.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = peer.recv(65536)
            if not chunk:
                break
            body += chunk
    except ConnectionResetError:
        return b"", {}, b""
    return status.encode(), headers, body


def operator_session(running: Running) -> tuple[httpx.Client, str]:
    """A logged-in httpx client of operator `ed`, and its session cookie (a copy of it)."""
    client = httpx.Client(base_url=running.url, timeout=30)
    assert log_in(client).status_code == 302
    cookie = client.cookies.get("newsletter_session")
    assert cookie
    return client, cookie


def import_allowed(running: Running, cookie: str) -> bool:
    """Does serve take a 200 KB body to the console's import with this session cookie? (With the
    allowance the app answers: the form has no CSRF token, 400; without it, serve's own 413.)"""
    answer = httpx.post(
        f"{running.url}/admin/subscribers/import",
        content=b"x" * 200_000,
        headers={"Content-Type": "text/csv"},
        cookies={"newsletter_session": cookie},
        timeout=30,
    )
    refused = answer.status_code == 413 and "this route takes 65536 bytes at most" in answer.text
    assert refused or answer.status_code == 400, (answer.status_code, answer.text[:300])
    return not refused


def test_a_copied_operator_cookie_loses_the_import_allowance_at_logout_and_at_a_new_password(
    running: Running,
) -> None:
    run_cli(running.config, "admin", "add-user", "ed", input="a long enough password\n")
    client, copied = operator_session(running)
    assert import_allowed(running, copied)  # the session is live: its copy may upload
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/").text)
    assert csrf is not None
    assert client.post("/admin/logout", data={"csrf_token": csrf.group(1)}).status_code == 302
    client.close()
    assert httpx.get(f"{running.url}/admin/", cookies={"newsletter_session": copied}).status_code == 302
    assert not import_allowed(running, copied)  # logged out: the copy is a stranger's cookie

    client, copied = operator_session(running)
    assert import_allowed(running, copied)
    run_cli(running.config, "admin", "add-user", "ed", input="another long password\n")
    assert client.get("/admin/").status_code == 302
    client.close()
    assert not import_allowed(running, copied)  # a new password ends it too


def send_paced(peer: socket.socket, data: bytes, rate: int) -> tuple[int, bytes]:
    """Send `data` at `rate` bytes a second (never faster), reading meanwhile: (bytes sent, what
    the server answered before the end, if it did)."""
    sent, answer, started = 0, b"", time.monotonic()
    peer.setblocking(False)
    try:
        while sent < len(data):
            readable, _, _ = select.select([peer], [], [], 0.05)
            if readable:
                chunk = peer.recv(65536)
                if not chunk:
                    break
                answer += chunk
                continue
            due = min(len(data), int((time.monotonic() - started) * rate))
            if due > sent:
                sent += peer.send(data[sent:due])
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        peer.setblocking(True)
    return sent, answer


def test_a_request_over_its_deadline_is_answered_408_and_closed(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """A 2 KB signup whose body trickles at 100 bytes a second: at its deadline (the head's time,
    2 s here and 10 s in serve, and no more for so small a body) the server answers 408 with
    Connection: close, then closes."""
    with (
        limited(tmp_path, smtp_sink, head_seconds=2) as running,
        socket.create_connection(("127.0.0.1", running.port), timeout=20) as peer,
    ):
        peer.sendall(head("/subscribe", 2048))
        started = time.monotonic()
        sent, early = send_paced(peer, b"x" * 2048, 100)
        peer.settimeout(10)
        status, headers, body = read_answer(peer) if not early else (early.split(b"\r\n")[0], {}, early)
        taken = time.monotonic() - started
        rest = peer.recv(100) if early else b"?"
    print(f"408 after {taken:.1f} s, {sent:,} of 2,048 body bytes sent: {status!r}")
    assert status == b"HTTP/1.1 408 Request Timeout", (status, body[:200])
    assert b"Connection: close" in early if early else headers.get("connection") == "close"
    assert sent < 2048
    assert early or rest in (b"", b"?")


def test_an_operators_import_at_16_kb_a_second_is_taken(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """A 100 KB CSV sent at 16 KB/s, the rate the README promises the console's import, to serve's
    server with a request's head given 3 s (serve: 10 s, where it takes a 240 KB file to show the
    same): 6.1 s, and a public route's 64 KB/s would have cut it off at 4.5 s."""
    with limited(tmp_path, smtp_sink, head_seconds=3) as running:
        run_cli(running.config, "admin", "add-user", "ed", input="a long enough password\n")
        client, _ = operator_session(running)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/subscribers").text)
        assert csrf is not None
        cookie = client.cookies.get("newsletter_session")  # now with the CSRF token's secret
        agent = str(client.headers["user-agent"])  # the session is bound to its browser
        client.close()
        rows = "".join(f"uplink{i}@example.org,Slow Reader {i}\r\n" for i in range(2500))
        body = (
            f'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{csrf.group(1)}\r\n'
            '--b\r\nContent-Disposition: form-data; name="file"; filename="r.csv"\r\n'
            f"Content-Type: text/csv\r\n\r\nemail,name\r\n{rows}\r\n--b--\r\n"
        ).encode()
        assert 95_000 <= len(body) <= 105_000
        assert len(body) / (16 * 1024) > 3 + len(body) / (64 * 1024) + 1  # a public route: cut off
        request_head = (
            f"POST /admin/subscribers/import HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n"
            f"Cookie: newsletter_session={cookie}\r\nUser-Agent: {agent}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", running.port), timeout=60) as peer:
            peer.sendall(request_head.encode())
            started = time.monotonic()
            sent, early = send_paced(peer, body, 16 * 1024)
            took = time.monotonic() - started
            status, _, answer = read_answer(peer) if not early else (early[:40], {}, early)
    print(f"{sent:,} bytes at 16 KB/s in {took:.1f} s: {status!r}")
    assert sent == len(body) and not early, early[:300]
    assert status == b"HTTP/1.1 200 OK", answer[:300]
    assert b"2500 added" in answer


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_a_kept_alive_connection_is_closed_after_100_requests(running: Running) -> None:
    """One connection asking /healthz again and again (as the attacker's every 5 s) is not kept
    for ever: the 100th answer says Connection: close, and the connection closes."""
    answers: list[dict[str, str]] = []
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as peer:
        for _ in range(101):
            try:
                peer.sendall(HEALTHZ)
            except (BrokenPipeError, ConnectionResetError):
                break
            status, headers, _ = read_answer(peer)
            if not status:
                break
            assert status == b"HTTP/1.1 200 OK"
            answers.append(headers)
        closed = read_answer(peer)[0] == b""
    print(f"answers on one connection: {len(answers)}; the last says {answers[-1].get('connection')!r}")
    assert len(answers) == 100 and closed
    assert [h.get("connection") for h in answers] == [None] * 99 + ["close"]


def test_empty_lines_before_a_request_are_passed_over(running: Running) -> None:
    """RFC 9112 section 2.2: a server ignores empty lines before a request line (they closed the
    connection with an AttributeError logged, one line in serve's log per stranger's connection)."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as peer:
        peer.sendall(b"\r\n\r\n")
        time.sleep(0.3)  # a packet of its own
        peer.sendall(HEALTHZ)
        assert read_answer(peer)[0] == b"HTTP/1.1 200 OK"
    running.proc.send_signal(signal.SIGTERM)
    output = running.proc.communicate(timeout=30)[0].decode()
    assert "uncaptured python exception" not in output, output


def test_one_address_holds_at_most_50_connections_and_the_trusted_proxies_more(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """50 idle connections from 127.0.0.2: its 51st is closed unanswered, anybody else is served,
    and the address gets one again when one of its 50 closes. 60 from a trusted proxy are served."""
    port, url, config = served_config(tmp_path, smtp_sink, '\n[web]\ntrusted_proxies = ["127.0.0.3"]\n')
    proc = start_server(config, port)
    held: list[socket.socket] = []

    def connect(source: str) -> socket.socket:
        peer = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        held.append(peer)
        return peer

    def served(peer: socket.socket) -> bool:
        try:
            peer.sendall(HEALTHZ)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return read_answer(peer)[0] == b"HTTP/1.1 200 OK"

    try:
        assert wait_for(lambda: healthy(url), timeout=30), "newsletter serve did not come up"
        stranger = [connect("127.0.0.2") for _ in range(50)]
        assert served(stranger[0])
        assert not served(connect("127.0.0.2")), "a 51st connection from one address was served"
        assert served(connect("127.0.0.1"))
        stranger[1].close()
        time.sleep(0.5)  # the server's loop sees the close
        assert served(connect("127.0.0.2"))
        proxied = [connect("127.0.0.3") for _ in range(60)]
        assert all(served(peer) for peer in proxied)
    finally:
        for peer in held:
            peer.close()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert output.count("refusing connections from 127.0.0.2: 50 open already") == 1, output


def test_a_connection_ends_when_its_life_is_over(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """serve's own server with a 2 s life for a connection (and 30 s of idling allowed): the first
    answer after 2 s says Connection: close; a connection idle at that time is closed then."""
    with limited(tmp_path, smtp_sink, connection_seconds=2, head_seconds=30) as server:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as busy,
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle,
        ):
            opened = time.monotonic()
            idle.sendall(HEALTHZ)
            assert read_answer(idle)[1].get("connection") is None
            kept: list[str | None] = []
            while True:
                busy.sendall(HEALTHZ)
                status, headers, _ = read_answer(busy)
                assert status == b"HTTP/1.1 200 OK"
                kept.append(headers.get("connection"))
                if headers.get("connection") == "close" or time.monotonic() - opened > 8:
                    break
                time.sleep(0.25)
            lived = time.monotonic() - opened
            assert read_answer(busy)[0] == b""  # closed after its answer
            assert read_answer(idle)[0] == b""  # closed at 2-3 s, long before its 30 s of idling
            idle_lived = time.monotonic() - opened
    print(f"{len(kept)} answers in {lived:.1f} s, the last with Connection: close")
    print(f"the idle connection closed at {idle_lived:.1f} s")
    assert kept[-1] == "close" and all(k is None for k in kept[:-1])
    assert 2 <= lived and idle_lived < 8

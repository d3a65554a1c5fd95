"""`newsletter serve` (a real waitress subprocess on a loopback port) against what a stranger can
send it: huge bodies, slow headers, lone surrogates, a CR/LF in `next=`, a forged Host header."""

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import SmtpSink, run_cli, wait_for
from .test_web_server import _healthy, served_config, start_server


@dataclass
class Running:
    url: str
    port: int
    config: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def running(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Running]:
    port, url, config = served_config(tmp_path, smtp_sink)
    proc = start_server(config, port)
    try:
        assert wait_for(lambda: _healthy(url), timeout=30), "newsletter serve did not come up"
        yield Running(url, port, config, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


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
    assert _healthy(running.url)


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
    no time more), not held while it keeps trickling."""
    slow: list[socket.socket] = []
    try:
        for i in range(120):
            peer = socket.create_connection(("127.0.0.1", running.port))
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

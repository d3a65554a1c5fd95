"""`newsletter serve` (a real waitress subprocess on a loopback port) against what a stranger can
send it: huge bodies, slow headers, lone surrogates, a CR/LF in `next=`, a forged Host header."""

import json
import re
import signal
import subprocess
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
    "https://evil.example/admin/",
    "//evil.example/admin/",
]


def test_a_hostile_next_after_login_redirects_within_the_console(running: Running) -> None:
    run_cli(running.config, "admin", "add-user", "ed", input="a long enough password\n")
    login = {"username": "ed", "password": "a long enough password"}
    for target, expected in [(t, "/admin/") for t in HOSTILE_NEXT] + [
        ("/admin/subscribers%3Fq%3Dann", "/admin/subscribers?q=ann")  # a safe one is followed
    ]:
        with httpx.Client(base_url=running.url) as client:
            form = client.get("/admin/login").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            answer = client.post(f"/admin/login?next={target}", data={**login, "csrf_token": csrf})
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

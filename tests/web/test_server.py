"""`newsletter serve` as a real server (waitress, a subprocess on a free loopback port), driven with
httpx and in Debian's Chromium through Playwright. Mail goes to the aiosmtpd fixture."""

import contextlib
import email
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import httpx
import pytest

from ..support.helpers import ROOT, Gate, SmtpSink, free_port, run_cli, start_cli, wait_for, write_config

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


@dataclass
class Server:
    url: str
    config: Path


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


@pytest.fixture
def server(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Server]:
    port, url, config = served_config(tmp_path, smtp_sink)
    proc = start_server(config, port)

    assert wait_for(lambda: _healthy(url), timeout=30), "newsletter serve did not come up"
    yield Server(url, config)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    """`newsletter serve` as a user starts it, on a loopback port."""
    return start_cli(config, "serve", "--port", str(port))


def link_in_mail(sink: SmtpSink, address: str, pattern: str, *, index: int = -1) -> str:
    received = sink.by_recipient()[address][index]
    msg = email.message_from_bytes(received.data, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(pattern, text)
    assert match, text
    return match.group(0)


def test_one_click_unsubscribe_exactly_as_a_mailbox_provider_posts_it(
    server: Server, smtp_sink: SmtpSink
) -> None:
    signup = httpx.post(
        f"{server.url}/subscribe", data={"email": "one@example.com"}, headers={"Accept": "application/json"}
    )
    assert signup.status_code == 200 and signup.json()["status"] == "ok"
    assert "nosniff" == signup.headers["x-content-type-options"]
    assert wait_for(lambda: "one@example.com" in smtp_sink.by_recipient())
    confirm = link_in_mail(smtp_sink, "one@example.com", r"http://\S+/confirm/\S+")
    assert httpx.get(confirm).status_code == 200  # the page with the button: a link scanner's fetch
    assert httpx.post(confirm).status_code == 200
    run_cli(server.config, "run")  # the next issue, with its List-Unsubscribe header
    issue = email.message_from_bytes(
        smtp_sink.by_recipient()["one@example.com"][-1].data, policy=policy.default
    )
    assert issue["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = str(issue["List-Unsubscribe"]).strip("<>")
    assert url.startswith(server.url + "/unsubscribe/")
    # RFC 8058: a POST with this body, no cookies, no redirect followed
    answer = httpx.post(
        url,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert answer.status_code == 200
    listed = run_cli(server.config, "subscribers", "list", "--status", "unsubscribed", "--json").stdout
    assert "one@example.com" in listed


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
)
def test_sign_up_confirm_and_unsubscribe_in_chromium(
    server: Server, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 1000})
        page.goto(server.url + "/")
        page.screenshot(path=str(shots / "1-signup.png"), full_page=True)
        page.fill("#email", "browser@example.com")
        page.fill("#name", "Grace Browser")
        page.click("button[type=submit]")
        page.wait_for_selector("p.ok")
        assert "Check your inbox" in page.inner_text("p.ok")
        page.screenshot(path=str(shots / "2-check-inbox.png"), full_page=True)

        assert wait_for(lambda: "browser@example.com" in smtp_sink.by_recipient(), timeout=10)
        page.goto(link_in_mail(smtp_sink, "browser@example.com", r"http://\S+/confirm/\S+"))
        assert "Confirm your subscription" in page.inner_text("h2")
        page.click("button[type=submit]")
        page.wait_for_selector("text=You're subscribed")
        assert "You're subscribed" in page.inner_text("h2")
        page.screenshot(path=str(shots / "3-confirmed.png"), full_page=True)

        run_cli(server.config, "run")
        issue = smtp_sink.by_recipient()["browser@example.com"][-1]
        msg = email.message_from_bytes(issue.data, policy=policy.default)
        assert "Good morning, Grace." in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        page.goto(str(msg["List-Unsubscribe"]).strip("<>"))
        page.screenshot(path=str(shots / "4-unsubscribe.png"), full_page=True)
        page.click("button[type=submit]")
        page.wait_for_selector("p.ok")
        assert "will receive no more issues" in page.inner_text("p.ok")
        page.screenshot(path=str(shots / "5-unsubscribed.png"), full_page=True)
        browser.close()
    listed = run_cli(server.config, "subscribers", "list", "--status", "unsubscribed", "--json").stdout
    assert "browser@example.com" in listed
    assert sorted(f.name for f in shots.iterdir()) == [
        "1-signup.png",
        "2-check-inbox.png",
        "3-confirmed.png",
        "4-unsubscribe.png",
        "5-unsubscribed.png",
    ]
    keep = os.environ.get("NEWSLETTER_KEEP_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)


def _first_connection_to(prefix: str) -> Callable[[int, list[str]], bool]:
    """A gate's rule: the messages of the first connection that carried one to `prefix...`."""
    first: list[int] = []

    def applies(connection: int, rcpts: list[str]) -> bool:
        if not rcpts[0].startswith(prefix):
            return False
        if not first:
            first.append(connection)
        return connection == first[0]

    return applies


def test_signups_during_a_send_share_the_sqlite_file(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """200 signups from 20 threads while a 2,000-subscriber send runs (one of its connections held
    until the signups are answered, so it is still running): no 5xx, no "database is locked",
    every signup kept, the send complete and exact."""
    from concurrent.futures import ThreadPoolExecutor

    from newsletter.store import Store
    from newsletter.subscribers.records import NewSubscriber

    from ..cli.test_sending import _now, start_send

    port, url, config = served_config(
        tmp_path, smtp_sink, "connections = 4\n[web]\nsignups_per_ip_per_hour = 1000\n"
    )
    store = Store(f"sqlite:///{tmp_path / 'subscribers.db'}")
    store.import_subscribers([NewSubscriber(f"reader{i}@example.com", None) for i in range(2000)], now=_now())
    run_cli(config, "build")
    web = start_server(config, port)
    try:
        assert wait_for(lambda: _healthy(url), timeout=30)
        # one of the send's connections is held from the 200th message until the signups are answered
        smtp_sink.gate = Gate(after=200, applies=_first_connection_to("reader"))
        send = start_send(config)
        assert wait_for(lambda: len(smtp_sink.messages) >= 200, timeout=60)  # the send is under way

        def signup(i: int) -> int:
            return httpx.post(
                f"{url}/subscribe", data={"email": f"new{i}@example.com"}, timeout=30
            ).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(pool.map(signup, range(200)))
        seconds = time.monotonic() - started
        assert send.poll() is None  # the send ran all along
        smtp_sink.gate.opened.set()
        out, err = send.communicate(timeout=120)
        assert send.returncode == 0, err
        confirmed = [f"new{i}@example.com" for i in range(200)]
        assert wait_for(lambda: all(a in smtp_sink.by_recipient() for a in confirmed), timeout=60)
    finally:
        web.send_signal(signal.SIGTERM)
        log, _ = web.communicate(timeout=10)
    assert codes == [200] * 200, sorted(set(codes))
    assert b"database is locked" not in log and "database is locked" not in err
    pending = [s.email for s in store.iter_subscribers(status="pending")]
    assert len(pending) == 200
    got = smtp_sink.by_recipient()
    readers = {a: m for a, m in got.items() if a.startswith("reader")}
    assert len(readers) == 2000 and all(len(m) == 1 for m in readers.values())
    assert all(len(got[f"new{i}@example.com"]) == 1 for i in range(200))  # one confirmation each
    store.close()
    print(f"200 signups in {seconds:.2f} s ({200 / seconds:.0f}/s) during a 2,000-subscriber send")


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
)
def test_the_console_in_chromium(server: Server, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """Log in, the dashboard's two charts drawn, an issue, a test copy, pause and resume."""
    from playwright.sync_api import sync_playwright

    added = run_cli(server.config, "admin", "add-user", "ed", input="a long enough password\n")
    assert "added operator ed" in added.stdout
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text("email,name\n" + "".join(f"c{i}@example.org,Reader {i}\n" for i in range(40)))
    run_cli(server.config, "subscribers", "import", str(csv_file))
    run_cli(server.config, "run")  # yesterday's issue, say: sent
    run_cli(server.config, "subscribers", "remove", "c3@example.org")
    with server.config.open("a") as f:  # a second feed, so tomorrow's issue has stories of its own
        f.write(f'\n[[sources]]\nname = "In Depth"\nurl = "{ROOT / "samples/feeds/in-depth.atom"}"\n')
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()  # the config's zone is UTC
    built = run_cli(server.config, "build", "--date", tomorrow, "--json").stdout  # the next, unsent
    next_issue = json.loads(built)["issue"]["id"]
    shots = tmp_path / "console"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server.url + "/admin/")
        assert page.url.startswith(server.url + "/admin/login")
        page.fill("#username", "ed")
        page.fill("#password", "a wrong password")
        page.click("button[type=submit]")
        assert "do not match" in page.inner_text("p.error")
        page.fill("#password", "a long enough password")
        page.click("button[type=submit]")
        page.wait_for_selector("html[data-charts-drawn='2']")
        points = page.evaluate(
            "[...document.querySelectorAll('canvas')].map(c => Chart.getChart(c).data.datasets"
            ".reduce((n, d) => n + d.data.filter(v => v > 0).length, 0))"
        )
        assert len(points) == 2 and all(n > 0 for n in points), points  # both charts drawn, with data
        page.screenshot(path=str(shots / "1-dashboard.png"), full_page=True)

        page.click(f"a[href='/admin/issues/{next_issue}']")
        page.wait_for_selector("#pause")
        frame = page.frame_locator("iframe.preview")
        assert frame.locator("body").inner_text()  # the issue shows in its sandboxed frame
        page.fill("#test-email", "editor@example.net")
        page.click("#send-test")
        page.wait_for_selector("p.ok")
        assert "went to editor@example.net" in page.inner_text("p.ok")
        assert wait_for(lambda: "editor@example.net" in smtp_sink.by_recipient(), timeout=10)
        page.screenshot(path=str(shots / "2-issue-test-sent.png"), full_page=True)

        page.click("#pause")
        page.wait_for_selector("#resume")
        assert "paused" in page.inner_text("main")
        page.screenshot(path=str(shots / "3-paused.png"), full_page=True)
        page.click("#resume")
        page.wait_for_selector("p.ok")
        assert wait_for(lambda: len(smtp_sink.by_recipient().get("c0@example.org", [])) == 2, timeout=30)

        def all_39_recorded() -> bool:  # the page does not refresh itself: load it until it says so
            page.reload()
            return page.inner_text("[data-state=sent]") == "39"

        assert wait_for(all_39_recorded, timeout=30)
        page.screenshot(path=str(shots / "4-resumed-and-sent.png"), full_page=True)

        page.goto(server.url + "/admin/subscribers?q=c1")
        assert "c1@example.org" in page.inner_text("#subscribers")
        page.screenshot(path=str(shots / "5-subscribers.png"), full_page=True)
        browser.close()
    got = smtp_sink.by_recipient()
    readers = {a: m for a, m in got.items() if a.startswith("c")}
    assert len(readers) == 40 and all(
        len(m) == (1 if a == "c3@example.org" else 2) for a, m in readers.items()
    )
    assert sorted(f.name for f in shots.iterdir()) == [
        "1-dashboard.png",
        "2-issue-test-sent.png",
        "3-paused.png",
        "4-resumed-and-sent.png",
        "5-subscribers.png",
    ]
    keep = os.environ.get("NEWSLETTER_KEEP_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, Path(keep) / "console", dirs_exist_ok=True)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def serving(config: Path, port: int) -> Iterator[None]:
    """`newsletter serve` of `config` on `port`, up and healthy, stopped at the end."""
    proc = start_cli(config, "serve", "--port", str(port))
    try:
        assert wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), timeout=30), (
            "newsletter serve did not come up"
        )
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
)
def test_markup_in_a_signup_name_is_text_in_the_console(server: Server, tmp_path: Path) -> None:
    """As a stranger would: sign up with markup in the name; then the operator opens the console in
    Chromium and sees the text, and no element or script of it ran."""
    from playwright.sync_api import sync_playwright

    name = "<b id=evil>Bold</b><img src=x onerror=\"document.title='pwned'\">"
    run_cli(server.config, "admin", "add-user", "ed", input="a long enough password\n")
    shots = tmp_path / "markup"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        stranger = browser.new_page(viewport={"width": 900, "height": 900})
        stranger.goto(server.url + "/")
        stranger.fill("#email", "stranger@example.com")
        stranger.evaluate(f"document.querySelector('#name').value = {json.dumps(name)}")  # past maxlength
        stranger.click("button[type=submit]")
        stranger.wait_for_selector("p.ok")

        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url + "/admin/login")
        page.fill("#username", "ed")
        page.fill("#password", "a long enough password")
        page.click("button[type=submit]")
        page.goto(server.url + "/admin/subscribers")
        row = page.inner_text("#subscribers")
        assert name in row  # the markup, shown as the text it is
        assert page.locator("#evil").count() == 0 and page.locator("img[src=x]").count() == 0
        assert page.title() != "pwned"
        page.screenshot(path=str(shots / "console-subscribers.png"), full_page=True)
        browser.close()
    keep = os.environ.get("NEWSLETTER_KEEP_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, Path(keep) / "markup", dirs_exist_ok=True)


def test_stopping_the_server_records_what_its_console_send_has_in_flight(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """A send resumed from the console runs in the server process. SIGTERM to the server stops it
    as SIGTERM stops `send`: it stops claiming, records what is in flight, and leaves no row
    `sending`; the next send finds nothing of unknown fate and sends each reader one copy."""
    port, url, config = served_config(tmp_path, smtp_sink, "connections = 2\n")
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text("email\n" + "".join(f"s{i}@example.org\n" for i in range(500)))
    run_cli(config, "subscribers", "import", str(csv_file))
    issue_id = json.loads(run_cli(config, "build", "--json").stdout)["issue"]["id"]
    run_cli(config, "pause", "--issue", str(issue_id))
    run_cli(config, "admin", "add-user", "ed", input="a long enough password\n")
    smtp_sink.gate = Gate(after=200)  # the console send is held mid-way until the server is stopping
    proc = start_server(config, port)
    try:
        assert wait_for(lambda: _healthy(url), timeout=30)
        with httpx.Client(base_url=url) as web:
            form = web.get("/admin/login").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            login = {"username": "ed", "password": "a long enough password", "csrf_token": csrf}
            assert web.post("/admin/login", data=login).status_code == 302
            page = web.get(f"/admin/issues/{issue_id}").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            assert web.post(f"/admin/issues/{issue_id}/resume", data={"csrf_token": csrf}).status_code == 302
        assert smtp_sink.gate.reached.wait(timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not _healthy(url), timeout=30)  # it has stopped serving, and is stopping the send
        smtp_sink.gate.opened.set()
        log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, log
    assert b"stopped the console send of issue" in log
    counts = json.loads(run_cli(config, "status", "--issue", str(issue_id), "--json").stdout)
    deliveries = counts["issues"][0]["deliveries"]
    assert deliveries.get("sending", 0) == 0 and deliveries.get("unknown", 0) == 0, deliveries
    done = json.loads(run_cli(config, "send", "--issue", str(issue_id), "--json").stdout)
    assert done["unknown_found"] == 0 and done["finished"], done
    got = smtp_sink.by_recipient()
    assert len(got) == 500 and all(len(m) == 1 for m in got.values())

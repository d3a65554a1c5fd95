"""`make bench`: render, compose and send figures for one issue, measured in one run on this machine.

The ceiling is Postfix's smtp-source -> smtp-sink on 127.0.0.1 with the same message size and the
same number of sessions (Debian package `postfix`); without it, an aiosmtpd sink stands in and the
table says so. Everything targets loopback only and is bounded in count."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.compose import MessageTemplate, Recipient  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.deliver import send_issue  # noqa: E402
from newsletter.digest import Digest, Section, StoryItem  # noqa: E402
from newsletter.render import fill, greeting_for, inline_css, render_issue  # noqa: E402
from newsletter.store import NewSubscriber, Store  # noqa: E402
from newsletter.tokens import Tokens  # noqa: E402
from newsletter.transport import SmtpTransport  # noqa: E402

NOW = datetime.now(UTC)
SECRET = "bench-secret-key-0123456789abcdef"
console = Console(width=150)


def sample_digest() -> Digest:
    """Twelve stories, shaped like a real day's issue."""
    words = (
        "grid operator data centre demand record winter capacity review providers generation "
        "maintainers patch distributions researcher release catalogue repair batteries storage"
    ).split()

    def story(i: int, section: str) -> StoryItem:
        summary = " ".join(words[(i + k) % len(words)] for k in range(55)).capitalize() + "."
        bullets = (
            tuple(" ".join(words[(i + k) % len(words)] for k in range(18)) + "." for k in range(3))
            if i % 3 == 0
            else ()
        )
        return StoryItem(
            id=i,
            title=f"Headline number {i}: {' '.join(words[i % 7 : i % 7 + 6])}",
            link=f"https://news.example.com/2026/story-{i}",
            source="Example Wire",
            section=section,
            summary=summary,
            bullets=bullets,
            author="A. Writer",
            image=f"https://news.example.com/img/{i}.jpg" if i % 4 == 0 else None,
            published_at=NOW - timedelta(hours=i),
            fetched_at=NOW,
        )

    sections = ("Tech News", "In-Depth Tech Stories", "Expert Reviews")
    stories = [story(i, sections[i % 3]) for i in range(12)]
    return Digest(
        issue_date=NOW.date(),
        lead=stories[0],
        sections=tuple(Section(n, tuple(s for s in stories[1:] if s.section == n)) for n in sections),
    )


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@contextmanager
def smtp_sink(port: int) -> Iterator[str]:
    """Postfix's smtp-sink on loopback, or an aiosmtpd sink when Postfix is not installed."""
    binary = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
    )
    if binary:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "512"])
        kind = "smtp-sink"
    else:
        code = (
            "import time\nfrom aiosmtpd.controller import Controller\n"
            "class H:\n async def handle_DATA(self, s, se, e): return '250 OK'\n"
            f"c = Controller(H(), hostname='127.0.0.1', port={port}); c.start()\n"
            "time.sleep(3600)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code])
        kind = "aiosmtpd (install Debian's postfix for smtp-sink)"
    time.sleep(0.7)
    try:
        yield kind
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ceiling(port: int, *, sessions: int, messages: int, size: int) -> float | None:
    binary = shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source") else None
    )
    if not binary:
        return None
    start = time.perf_counter()
    subprocess.run(
        [
            binary,
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "bench@example.com",
            "-t",
            "reader@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
        timeout=300,
    )
    return messages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", SECRET)
    settings = load_settings(ROOT / "config.toml")
    digest = sample_digest()
    rows: list[tuple[str, str, str]] = []

    rendered = render_issue(digest, settings, issue_id=1)
    render_s = timed(lambda: render_issue(digest, settings, issue_id=1), 10)
    inline_s = timed(lambda: inline_css(rendered.html), 10)
    rows.append(
        (
            "render + inline one issue (12 stories)",
            f"{render_s * 1000:.1f} ms",
            f"premailer alone {inline_s * 1000:.1f} ms",
        )
    )

    tokens = Tokens(SECRET)
    n = settings.newsletter
    template = MessageTemplate(
        rendered,
        issue_id=1,
        newsletter_name=n.name,
        sender=n.sender,
        reply_to=n.reply_to,
        base_url=n.base_url,
    )
    recipients = [
        Recipient(i, f"reader{i}@example.com", f"Reader {i}", tokens.unsubscribe(i)) for i in range(20000)
    ]
    size = len(template.compose(recipients[0]))
    rows.append(("message size", f"{size / 1024:.1f} KB", "multipart/alternative, quoted-printable"))
    start = time.perf_counter()
    for r in recipients:
        template.compose(r)
    compose_us = (time.perf_counter() - start) / len(recipients) * 1e6
    token_us = timed(lambda: tokens.unsubscribe(12345), 2000) * 1e6
    rows.append(
        ("compose one message (splice)", f"{compose_us:.1f} µs", f"+ signing its token {token_us:.1f} µs")
    )

    def naive(i: int) -> bytes:
        html = inline_css(render_issue(digest, settings, issue_id=1).html)
        url = f"{n.base_url}/unsubscribe/{tokens.unsubscribe(i)}"
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = n.sender, f"reader{i}@example.com", rendered.subject
        msg.set_content(
            fill(rendered.text, greeting=greeting_for("Reader"), unsubscribe_url=url, for_html=False)
        )
        msg.add_alternative(
            fill(html, greeting=greeting_for("Reader"), unsubscribe_url=url, for_html=True), subtype="html"
        )
        return msg.as_bytes(policy=SMTP)

    naive_s = timed(lambda: naive(7), 20)
    rows.append(
        (
            "compose the naive way (render + premailer + MIME)",
            f"{naive_s * 1e6:.0f} µs",
            f"{naive_s * 1e6 / compose_us:.0f}x the splice",
        )
    )

    port = 2600 + os.getpid() % 1000
    with smtp_sink(port) as sink_kind, tempfile.TemporaryDirectory() as tmp:
        top = ceiling(port, sessions=1, messages=5000, size=size)
        if top:
            rows.append(("ceiling: smtp-source -> smtp-sink, 1 session", f"{top:,.0f} msg/s", "same size"))
        store = Store(f"sqlite:///{tmp}/bench.db")
        store.migrate()
        store.import_subscribers(
            [NewSubscriber(f"reader{i}@example.com", f"Reader {i}") for i in range(args.subscribers)], now=NOW
        )
        issue = store.create_issue(
            NOW.date(),
            story_ids=[],
            render=lambda _i: (rendered.subject, rendered.preheader, rendered.html, rendered.text),
            now=NOW,
        )
        assert issue is not None
        transport = SmtpTransport("127.0.0.1", port, security="none")
        start = time.perf_counter()
        report = send_issue(store, transport, template, tokens, issue_id=issue.id, mail_from="b@example.com")
        elapsed = time.perf_counter() - start
        transport.close()
        rate = report.sent / elapsed
        note = f"{report.sent} sent, SQLite, 1 connection, sink: {sink_kind}"
        if top:
            note += f"; {rate / top:.0%} of the ceiling"
        rows.append(("newsletter send (row states per message)", f"{rate:,.0f} msg/s", note))

    table = Table("what", "figure", "note", title="newsletter benchmarks")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()

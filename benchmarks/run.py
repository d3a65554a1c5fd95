"""`make bench`: the send path measured in one run on this machine, against Postfix's smtp-sink.

The ceiling is Postfix's smtp-source -> smtp-sink on 127.0.0.1 with the same message size and
the same number of sessions (Debian package `postfix`: `apt-get install postfix`); without them
an aiosmtpd sink stands in and the table says so. Every row targets loopback only and is bounded
in count. `--quick` runs smaller counts (for a look, not for the README)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import smtplib
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
from email.utils import format_datetime
from pathlib import Path

import dkim
import feedparser
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bounce_mail, build_time, clustering, dashboard, embedding, variants  # noqa: E402
from newsletter.config import SourceSettings, load_settings  # noqa: E402
from newsletter.content.digest import Digest, DigestStory, Section  # noqa: E402
from newsletter.content.render import RenderedIssue, fill, greeting_for, inline_css, render_issue  # noqa: E402
from newsletter.content.sources import parse_feed  # noqa: E402
from newsletter.delivery.compose import MessageTemplate, Recipient  # noqa: E402
from newsletter.delivery.signing import SIGNED_HEADERS, DkimSigner, generate_key  # noqa: E402
from newsletter.delivery.tokens import Tokens  # noqa: E402
from newsletter.delivery.transport import Envelope, SmtpTransport  # noqa: E402
from newsletter.store import Store  # noqa: E402
from newsletter.subscribers.records import NewSubscriber  # noqa: E402

NOW = datetime.now(UTC)
SECRET = "bench-secret-key-0123456789abcdef"
PG_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
console = Console(width=160)


def sample_digest() -> Digest:
    """Twelve stories, shaped like a real day's issue."""
    words = (
        "grid operator data centre demand record winter capacity review providers generation "
        "maintainers patch distributions researcher release catalogue repair batteries storage"
    ).split()

    def phrase(start: int, length: int) -> str:
        return " ".join(words[(start + k) % len(words)] for k in range(length))

    def story(i: int, section: str) -> DigestStory:
        bullets = tuple(phrase(i + k, 18) + "." for k in range(3)) if i % 3 == 0 else ()
        return DigestStory(
            id=i,
            title=f"Headline number {i}: {phrase(i, 6)}",
            link=f"https://news.example.com/2026/story-{i}",
            source="Example Wire",
            section=section,
            summary=phrase(i, 55).capitalize() + ".",
            bullets=bullets,
            author="A. Writer",
            image=f"https://news.example.com/img/{i}.jpg" if i % 4 == 0 else None,
            published_at=NOW - timedelta(hours=i),
            fetched_at=NOW,
        )

    names = ("Tech News", "In-Depth Tech Stories", "Expert Reviews")
    stories = [story(i, names[i % 3]) for i in range(12)]
    sections = tuple(Section(n, tuple(s for s in stories[1:] if s.section == n)) for n in names)
    return Digest(issue_date=NOW.date(), lead=stories[0], sections=sections)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def feed_rows(entries: int) -> list[tuple[str, str, str, str]]:
    """Parsing one big feed: every entry read (max_items as large), and the default cap."""
    dates = [format_datetime(NOW - timedelta(minutes=i)) for i in range(entries)]
    items = "".join(
        f"<item><title>t{i}</title><link>http://a/{i}</link><pubDate>{d}</pubDate></item>"
        for i, d in enumerate(dates)
    )
    body = f'<rss version="2.0"><channel><title>T</title>{items}</channel></rss>'.encode()
    whole = SourceSettings("Big", "https://big.example/rss", max_items=entries)
    every = timed(lambda: parse_feed(body, whole, now=NOW), 1)
    alone = timed(lambda: feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False), 1)
    default = SourceSettings("Big", "https://big.example/rss")
    start = time.perf_counter()
    capped = len(parse_feed(body, default, now=NOW))
    capped_s = time.perf_counter() - start
    return [
        (
            f"parse a feed of {entries:,} entries, every one read",
            f"{every:.1f} s",
            "",
            f"feedparser alone {alone:.1f} s; {len(body) / 1e6:.1f} MB",
        ),
        (
            f"the same feed by default (max_items = {default.max_items})",
            f"{capped} stories",
            "",
            f"{capped_s:.1f} s, the newest kept",
        ),
    ]


def postfix(tool: str) -> str | None:
    return shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}",) if os.path.exists(p)), None)


@contextmanager
def sink(port: int) -> Iterator[str]:
    """Postfix's smtp-sink on loopback, or an aiosmtpd sink when Postfix is not installed."""
    binary = postfix("smtp-sink")
    if binary:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "1024"])
        kind = "smtp-sink"
    else:
        code = (
            "import time\nfrom aiosmtpd.controller import Controller\n"
            "class H:\n async def handle_DATA(self, s, se, e): return '250 OK'\n"
            f"c = Controller(H(), hostname='127.0.0.1', port={port}); c.start()\ntime.sleep(86400)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code])
        kind = "aiosmtpd (install Debian's postfix for smtp-sink)"
    time.sleep(0.7)
    try:
        yield kind
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ceiling(port: int, *, sessions: int, messages: int, size: int, runs: int = 3) -> float | None:
    """The fair ceiling: smtp-source -> smtp-sink with connections kept open (-d), as `newsletter
    send` keeps its own, at the same message size and sessions; the median of `runs` runs."""
    binary = postfix("smtp-source")
    if not binary:
        return None
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [
                binary,
                "-d",  # reuse each session for the next message
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
            timeout=600,
        )
        rates.append(messages / (time.perf_counter() - start))
    return statistics.median(rates)


class Bench:
    def __init__(self, rendered: RenderedIssue, port: int, workdir: Path) -> None:
        self.rendered, self.port, self.workdir = rendered, port, workdir

    def prepare(self, subscribers: int, *, postgres: bool) -> tuple[Path, dict[str, str]]:
        """A folder with config.toml and a database holding `subscribers` and one built issue."""
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        env = {"NEWSLETTER_SECRET_KEY": SECRET}
        if postgres:
            import psycopg

            schema = f"bench_{secrets.token_hex(4)}"
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            url = (
                PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
                + f"?options=-csearch_path%3D{schema}"
            )
        else:
            url = f"sqlite:///{folder / 'bench.db'}"
        env["NEWSLETTER_DATABASE_URL"] = url
        store = Store(url)
        store.migrate()
        batch = 5000
        for start in range(0, subscribers, batch):
            rows = [
                NewSubscriber(f"reader{i}@example.com", f"Reader {i}")
                for i in range(start, min(subscribers, start + batch))
            ]
            store.import_subscribers(rows, now=NOW)
        r = self.rendered
        store.create_issue(
            NOW.date(),
            story_ids=[],
            content=lambda _i: (r.subject, r.preheader, r.html, r.text),
            placeholder_key=r.placeholders.key,
            now=NOW,
        )
        store.close()
        return folder, env

    def send(
        self,
        subscribers: int,
        *,
        connections: int,
        processes: int = 1,
        postgres: bool = False,
        dkim_pem: bytes | None = None,
    ) -> tuple[float, int, float]:
        """`newsletter send` as a user runs it: (messages per second, messages, peak memory of the
        whole process tree in MB, as the sum of each process's proportional set size)."""
        folder, env = self.prepare(subscribers, postgres=postgres)
        dkim_section = ""
        if dkim_pem:
            (folder / "dkim.pem").write_bytes(dkim_pem)
            dkim_section = '[dkim]\ndomain = "example.com"\nselector = "news"\n'
        (folder / "config.toml").write_text(
            '[newsletter]\nname = "Bench Daily"\nsender = "Bench <digest@example.com>"\n'
            'base_url = "https://news.example.com"\npostal_address = "1 Bench Street"\n'
            f'[[sources]]\nname = "Tech"\nurl = "{ROOT / "samples/feeds/tech-news.xml"}"\n'
            f'[delivery]\ntransport = "smtp"\nprocesses = {processes}\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {self.port}\nsecurity = "none"\n'
            f"connections = {connections}\n" + dkim_section
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "newsletter.cli",
                "--config",
                str(folder / "config.toml"),
                "send",
                "--issue",  # the one issue prepare() made: "today's" would miss it after midnight
                "1",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
            cwd=folder,
        )
        # The whole tree's memory, read while it runs: the sum of each process's proportional set
        # size (pages the forked workers share with the owner counted once, not once per process).
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, sum(_pss_kb(pid) for pid in _tree(proc.pid)))
            time.sleep(0.05)
        out = proc.stdout.read() if proc.stdout else b""
        errors = proc.stderr.read() if proc.stderr else b""
        if proc.returncode != 0:
            raise RuntimeError(f"newsletter send failed: {errors.decode()}")
        _drop_schema(env["NEWSLETTER_DATABASE_URL"])
        report = json.loads(out)
        sent = report["this_run"].get("sent", 0)
        return sent / report["seconds"], sent, peak_kb / 1024


def _drop_schema(url: str) -> None:
    """A PostgreSQL row's schema, dropped once its send is measured (nothing left in the database)."""
    if "%3D" not in url:
        return
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("%3D", 1)[1]}" CASCADE')


def _tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a look")
    args = parser.parse_args()
    n_send, n_rss_small, n_rss_large = (4000, 2000, 20000) if args.quick else (20000, 10000, 100000)
    os.environ.setdefault("NEWSLETTER_SECRET_KEY", SECRET)
    settings = load_settings(ROOT / "config.toml")
    digest = sample_digest()
    rendered = render_issue(digest, settings, issue_id=1)
    n = settings.newsletter
    tokens = Tokens(SECRET)

    def make_template(signer: DkimSigner | None = None) -> MessageTemplate:
        return MessageTemplate(
            rendered,
            issue_id=1,
            newsletter_name=n.name,
            sender=n.sender_mailbox,
            reply_to=n.reply_to_mailbox,
            base_url=n.base_url,
            signer=signer,
            preferences_token=tokens.preferences,  # as a send composes: each reader's link signed
        )

    template = make_template()
    sample = template.compose(Recipient(1, "reader1@example.com", "Reader 1", tokens.unsubscribe(1)))
    size = len(sample)
    rows: list[tuple[str, str, str, str]] = []
    note = console.print

    render_s = timed(lambda: render_issue(digest, settings, issue_id=1), 10)
    inline_s = timed(lambda: inline_css(rendered.html), 10)
    rows.append(
        (
            "render + inline one issue (12 stories)",
            f"{render_s * 1000:.1f} ms",
            "",
            f"premailer alone {inline_s * 1000:.1f} ms; once per issue",
        )
    )
    rows += feed_rows(10_000 if args.quick else 40_000)
    rows.append(("message size", f"{size / 1024:.1f} KB", "", "multipart/alternative, quoted-printable"))
    recipients = [
        Recipient(i, f"reader{i}@example.com", f"Reader {i}", tokens.unsubscribe(i)) for i in range(20000)
    ]
    start = time.perf_counter()
    for r in recipients:
        template.compose(r)
    compose_us = (time.perf_counter() - start) / len(recipients) * 1e6
    token_us = timed(lambda: tokens.unsubscribe(12345), 5000) * 1e6
    rows.append(
        ("compose one message (splice)", f"{compose_us:.1f} µs", "", f"+ {token_us:.1f} µs to sign its token")
    )

    pem, _ = generate_key(2048)
    signing = make_template(DkimSigner(domain="example.com", selector="news", private_key_pem=pem))
    signed_us = timed(lambda: signing.compose(recipients[7]), 500) * 1e6
    dkimpy_us = (
        timed(
            lambda: dkim.sign(
                sample,
                b"news",
                b"example.com",
                pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(SIGNED_HEADERS),
            ),
            20,
        )
        * 1e6
    )
    rows.append(
        (
            "compose + DKIM-sign one message (RSA 2048)",
            f"{signed_us:,.0f} µs",
            "",
            f"dkim.sign() alone: {dkimpy_us:,.0f} µs (pure-Python RSA, key parsed per call)",
        )
    )

    def naive(i: int) -> bytes:
        fresh = render_issue(digest, settings, issue_id=1)
        html, names = inline_css(fresh.html), fresh.placeholders
        url = f"{n.base_url}/unsubscribe/{tokens.unsubscribe(i)}"
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = n.sender, f"reader{i}@example.com", rendered.subject
        msg.set_content(
            fill(fresh.text, names, greeting=greeting_for("Reader"), unsubscribe_url=url, for_html=False)
        )
        msg.add_alternative(
            fill(html, names, greeting=greeting_for("Reader"), unsubscribe_url=url, for_html=True),
            subtype="html",
        )
        return msg.as_bytes(policy=SMTP)

    naive_us = timed(lambda: naive(7), 20) * 1e6
    rows.append(
        (
            "compose the naive way (render + premailer + MIME)",
            f"{naive_us:,.0f} µs",
            "",
            f"{naive_us / compose_us:,.0f}x the splice",
        )
    )

    port = 2600 + os.getpid() % 1000
    with sink(port) as sink_kind, tempfile.TemporaryDirectory() as tmp:
        note(f"sink: {sink_kind}; message size {size} bytes")
        tops = {s: ceiling(port, sessions=s, messages=n_send, size=size) for s in (1, 4)}
        for s, top in tops.items():
            if top:
                rows.append(
                    (
                        f"ceiling: smtp-source -> smtp-sink, {s} session{'s' * (s > 1)}",
                        f"{top:,.0f} msg/s",
                        "100%",
                        f"{n_send:,} messages of the same size",
                    )
                )

        def ratio(rate: float, sessions: int) -> str:
            top = tops.get(sessions)
            return f"{rate / top:.0%}" if top else "n/a"

        # the transports alone, no database: the hand-written client against the standard library's
        def transport_rate(make: Callable[[], Callable[[int], None]], count: int) -> float:
            send_one = make()
            start = time.perf_counter()
            for i in range(count):
                send_one(i)
            return count / (time.perf_counter() - start)

        def ours() -> Callable[[int], None]:
            t = SmtpTransport("127.0.0.1", port, security="none")
            return lambda i: (t.send(Envelope("b@example.com", f"r{i}@example.com", "k"), sample), None)[1]

        def stdlib() -> Callable[[int], None]:
            s = smtplib.SMTP("127.0.0.1", port)
            return lambda i: (s.sendmail("b@example.com", [f"r{i}@example.com"], sample), None)[1]

        mine, std = transport_rate(ours, 3000), transport_rate(stdlib, 3000)
        rows.append(
            (
                "transport alone: this client, 1 connection",
                f"{mine:,.0f} msg/s",
                ratio(mine, 1),
                f"{mine / std:.1f}x smtplib; PIPELINING, no per-message copies",
            )
        )
        rows.append(
            ("transport alone: smtplib, 1 connection", f"{std:,.0f} msg/s", ratio(std, 1), "for comparison")
        )

        bench = Bench(rendered, port, Path(tmp))
        cores = min(os.cpu_count() or 1, 8)
        rates: dict[tuple[str, int, bool], float] = {}
        databases = [("SQLite", False)]
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3):
                databases.append(("PostgreSQL", True))
        except Exception as exc:  # noqa: BLE001
            note(f"PostgreSQL rows skipped: {exc}")
        for name, pg in databases:
            for procs in sorted({1, cores}):
                for signed in (False, True):
                    rate, sent, rss = bench.send(
                        n_send, connections=4, processes=procs, postgres=pg, dkim_pem=pem if signed else None
                    )
                    rates[(name, procs, signed)] = rate
                    unsigned = rates.get((name, procs, False), rate)
                    rows.append(
                        (
                            f"newsletter send, {name}, {procs} process{'es' * (procs > 1)}, 4 connections"
                            + (", DKIM-signed" if signed else ""),
                            f"{rate:,.0f} msg/s",
                            ratio(rate, 4),
                            f"{sent:,} subscribers, peak memory {rss:.0f} MB"
                            + (f"; {rate / unsigned:.0%} of unsigned" if signed else ""),
                        )
                    )

        # the naive method over the wire: render + premailer + MIME per subscriber, smtplib
        count = 100 if args.quick else 300
        client = smtplib.SMTP("127.0.0.1", port)
        start = time.perf_counter()
        for i in range(count):
            client.sendmail(n.sender_address, [f"reader{i}@example.com"], naive(i))
        naive_rate = count / (time.perf_counter() - start)
        client.quit()
        best = rates.get(("SQLite", cores, False), 0.0)
        rows.append(
            (
                "naive send: render + premailer + MIME per message",
                f"{naive_rate:,.0f} msg/s",
                ratio(naive_rate, 1),
                f"newsletter send (SQLite, {cores} processes) is {best / naive_rate:,.0f}x this",
            )
        )

        variant_rows, variants_fast, variants_built = variants.measure(port, Path(tmp), n_send // 2)
        rows += variant_rows

        small = bench.send(n_rss_small, connections=4, processes=cores)
        large = bench.send(n_rss_large, connections=4, processes=cores)
        rows.append(
            (
                f"peak memory of the whole send tree, {n_rss_small:,} subscribers",
                f"{small[2]:.0f} MB",
                "",
                f"{small[0]:,.0f} msg/s",
            )
        )
        rows.append(
            (
                f"peak memory of the whole send tree, {n_rss_large:,} subscribers",
                f"{large[2]:.0f} MB",
                "",
                f"{large[2] / small[2] - 1:+.0%} against {n_rss_small:,}; {large[0]:,.0f} msg/s",
            )
        )

    rows += bounce_mail.measure()
    rows += embedding.measure()
    rows += [(what, figure, "", note) for what, figure, note in clustering.rows()]
    build_rows, build_change = build_time.measure(5 if args.quick else 9)
    rows += build_rows
    console_rows = dashboard.measure(100_000 if args.quick else 1_000_000)
    rows += console_rows
    dashboard_ms = float(console_rows[0][1].split()[0])

    table = Table(
        "what", "figure", "of ceiling", "note", title=f"newsletter benchmarks ({os.cpu_count()} cores)"
    )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    top = tops.get(4) or 0
    targets = [
        (
            f"unsigned send, {name}, {cores} processes >= 60 % of the fair ceiling (4 sessions)",
            bool(top) and rates.get((name, cores, False), 0) >= 0.6 * top,
        )
        for name, _ in databases
    ]
    targets += [
        (
            f"DKIM-signed send, {name}, {cores} processes >= 80 % of unsigned",
            rates.get((name, cores, True), 0) >= 0.8 * rates.get((name, cores, False), 1),
        )
        for name, _ in databases
    ]
    targets += [
        ("send >= 10x the naive method", best >= 10 * naive_rate),
        ("send with 8 renderings >= 90 % of one rendering's throughput", variants_fast),
        ("build with 8 renderings <= 8 renders + 20 %", variants_built),
        ("peak memory of the tree < 250 MB at the large count", large[2] < 250),
        ("peak memory flat (<= +20 %)", large[2] <= small[2] * 1.2),
        ("console dashboard < 200 ms at the large list", dashboard_ms < 200),
        (
            "build of a normal day within +10 % of the one before clustering",
            build_change is not None and build_change <= 0.10,
        ),
    ]
    for label, ok in targets:
        console.print(f"{'met   ' if ok else 'MISSED'} {label}")


if __name__ == "__main__":
    main()

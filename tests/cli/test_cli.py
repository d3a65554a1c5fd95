"""The command line as a user runs it (in this process through click, and as real processes where
the exit code is the point), with real HTTP feeds and a real SMTP server."""

import email
import json
import re
from datetime import UTC, datetime
from email import policy
from pathlib import Path

from newsletter.db.models import SubscriberStatus
from newsletter.store import Store

from ..support.helpers import HOSTILE, ROOT, FeedServer, Route, SmtpSink, recent, rss, run_cli, write_config


def smtp_config(tmp_path: Path, feed_server: FeedServer, sink: SmtpSink) -> Path:
    feed_server.routes["/tech"] = Route(
        rss(
            [
                {
                    "title": f"Tech story {i}",
                    "link": f"https://tech.example/{i}",
                    "author": "Writer",
                    "description": f"<p>Words about tech story {i}.</p>",
                    "date": recent(i),
                }
                for i in range(1, 5)
            ]
        )
    )
    feed_server.routes["/reviews"] = Route(
        rss(
            [
                {
                    "title": "Review of a laptop",
                    "link": "https://reviews.example/laptop",
                    "category": "Reviews",
                    "description": "<p>It is fine.</p>",
                    "date": recent(2),
                }
            ]
        )
    )
    feed_server.routes["/hostile"] = Route(
        rss(
            [
                {
                    "title": "Council <script>alert(1)</script>votes",
                    "link": "https://local.example/vote",
                    "description": HOSTILE,
                    "date": recent(3),
                }
            ]
        )
    )
    return write_config(
        tmp_path,
        sources=[
            ("Hostile", feed_server.url("/hostile")),
            ("Tech", feed_server.url("/tech")),
            ("Reviews", feed_server.url("/reviews")),
            ("Broken", feed_server.url("/missing")),
        ],
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\nconnections = 1\n',
    )


def test_run_delivers_one_message_per_active_subscriber(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink
) -> None:
    config = smtp_config(tmp_path, feed_server, smtp_sink)
    run_cli(config, "init")
    csv = tmp_path / "subs.csv"
    csv.write_text("email,name\n" + "".join(f"reader{i}@example.com,Reader {i}\n" for i in range(200)))
    run_cli(config, "subscribers", "import", str(csv))
    run_cli(config, "subscribers", "remove", "reader5@example.com")
    run_cli(config, "subscribers", "remove", "reader6@example.com")
    store = Store(f"sqlite:///{tmp_path / 'subscribers.db'}")
    store.add_subscriber("waiting@example.com", None, now=datetime.now(UTC), status=SubscriberStatus.PENDING)
    store.close()

    first = run_cli(config, "run")
    assert "source 'Broken'" in first.stderr and "404" in first.stderr  # reported, and the rest went on
    assert "198 sent" in first.stdout

    got = smtp_sink.by_recipient()
    assert len(got) == 198 and all(len(m) == 1 for m in got.values())
    assert "reader5@example.com" not in got and "reader6@example.com" not in got
    assert "waiting@example.com" not in got  # pending: never confirmed

    msg = email.message_from_bytes(got["reader7@example.com"][0].data, policy=policy.default)
    assert msg["To"] == "Reader 7 <reader7@example.com>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.fullmatch(
        r"<(https://news\.example\.com/unsubscribe/[^>]+)>", str(msg["List-Unsubscribe"])
    )
    assert unsubscribe
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    styles = "".join(re.findall(r"<style[^>]*>(.*?)</style>", html, re.S))
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", styles).strip() == ""
    for link in [f"https://tech.example/{i}" for i in range(1, 5)] + ["https://reviews.example/laptop"]:
        assert f'href="{link}"' in html and link in text
    assert unsubscribe.group(1) in html and unsubscribe.group(1) in text
    assert "Good morning, Reader." in text
    # the hostile feed's story arrives as plain words, with none of its markup
    assert "Council votes" in text and "Council approves the new library budget." in html
    lowered = html.lower()
    for bad in (
        "<script",
        "onerror",
        "onclick",
        "javascript:",
        "data:text",
        "<iframe",
        "<form",
        "<object",
        "track.example",
        "alert(",
    ):
        assert bad not in lowered, bad

    second = run_cli(config, "run")
    assert "already built" in second.stdout and "nothing to send" in second.stdout
    assert len(smtp_sink.messages) == 198

    status = json.loads(run_cli(config, "status", "--json").stdout)
    (issue,) = status["issues"]
    assert issue["status"] == "sent" and issue["deliveries"]["sent"] == 198
    assert issue["deliveries"]["pending"] == 0 and issue["deliveries"]["unknown"] == 0

    listed = json.loads(run_cli(config, "subscribers", "list", "--status", "unsubscribed", "--json").stdout)
    assert [s["email"] for s in listed["subscribers"]] == ["reader5@example.com", "reader6@example.com"]
    assert listed["subscribers"][0]["unsubscribed_at"]


def test_outbox_demo_path_preview_and_test_copy(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = write_config(tmp_path)  # the bundled sample feed, outbox transport
    run_cli(config, "init")
    run_cli(config, "subscribers", "add", "ada@example.com", "--name", "Ada")
    built = json.loads(run_cli(config, "build", "--json").stdout)
    assert built["created"] and built["issue"]["stories"] == 4
    run_cli(config, "send")
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 1
    preview = tmp_path / "p.html"
    run_cli(config, "preview", "--out", str(preview))
    page = preview.read_text()
    assert "Regional grid operator" in page and "__NL_" not in page
    issue_id = built["issue"]["id"]
    sent = next((tmp_path / "outbox").rglob("*.eml")).read_bytes().decode()
    assert f"https://news.example.com/archive/{issue_id}" in page and "__NL_" not in sent
    assert (
        f"https://news.example.com/archive/{issue_id}" in sent
    )  # rendered first, its id filled in at store time
    run_cli(config, "preview", "--to", "editor@example.com")
    tests = list((tmp_path / "outbox" / "test").glob("*.eml"))
    assert len(tests) == 1
    msg = email.message_from_bytes(tests[0].read_bytes(), policy=policy.default)
    assert str(msg["Subject"]).startswith("[Test] ")
    status = json.loads(run_cli(config, "status", "--json").stdout)
    assert status["issues"][0]["deliveries"]["sent"] == 1  # the test copy is not a delivery


def test_exit_codes_and_plain_sentences(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_cli(config, "init")
    bad = run_cli(config, "subscribers", "add", "nope", check=False, process=True)
    assert bad.returncode == 2 and "not a valid email address" in bad.stderr
    spoofed = "A\r\nBcc: x@example.com"
    crlf = run_cli(
        config, "subscribers", "add", "a@example.com", "--name", spoofed, check=False, process=True
    )
    assert crlf.returncode == 2 and "line break" in crlf.stderr
    missing = run_cli(config, "send", "--issue", "99", check=False, process=True)
    assert missing.returncode == 1 and "there is no issue 99" in missing.stderr
    assert "Traceback" not in missing.stderr + bad.stderr
    nofile = run_cli(tmp_path / "nope.toml", "status", check=False, process=True)
    assert nofile.returncode == 2 and "no configuration file" in nofile.stderr


def test_no_issue_when_too_few_stories(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.routes["/old"] = Route(
        rss([{"title": "Old", "link": "https://x.example/old", "date": recent(72)}])
    )
    config = write_config(tmp_path, sources=[("Old", feed_server.url("/old"))])
    run_cli(config, "init")
    proc = run_cli(config, "build")
    assert "no issue for" in proc.stdout and "0 new stories" in proc.stdout


def test_run_on_postgresql(
    tmp_path: Path, feed_server: FeedServer, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    """The same main job with the database on the local PostgreSQL server."""
    import psycopg

    schema = postgres_url.rsplit("%3D", 1)[1]
    with psycopg.connect(postgres_url.replace("+psycopg", "").split("?")[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_cli" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}_cli"')
    config = smtp_config(tmp_path, feed_server, smtp_sink)
    env = {"NEWSLETTER_DATABASE_URL": f"{postgres_url}_cli"}
    run_cli(config, "init", extra_env=env)
    head = max(p.name[:4] for p in (ROOT / "newsletter/db/migrations/versions").glob("0*.py"))
    assert f"revision {head}" in run_cli(config, "init", extra_env=env).stdout  # idempotent
    run_cli(config, "subscribers", "add", "pg0@example.com", extra_env=env)
    run_cli(config, "subscribers", "add", "pg1@example.com", extra_env=env)
    csv = tmp_path / "subs.csv"
    csv.write_text("email\n" + "".join(f"pg{i}@example.com\n" for i in range(20)))
    assert (
        "18 new, 2 already present"
        in run_cli(config, "subscribers", "import", str(csv), extra_env=env).stdout
    )
    run_cli(config, "run", extra_env=env)
    run_cli(config, "run", extra_env=env)
    got = smtp_sink.by_recipient()
    assert len(got) == 20 and all(len(m) == 1 for m in got.values())
    status = json.loads(run_cli(config, "status", "--json", extra_env=env).stdout)
    assert status["issues"][0]["deliveries"]["sent"] == 20
    assert status["subscribers"] == {"active": 20}


def test_files_with_readers_addresses_are_the_owners_alone(tmp_path: Path) -> None:
    """The database (and its WAL), the outbox and an export are 0600 files in 0700 folders, even
    under a permissive umask."""
    import os
    import stat

    config = write_config(tmp_path)
    old = os.umask(0o022)
    try:
        run_cli(config, "init")
        run_cli(config, "subscribers", "add", "reader@example.org")
        run_cli(config, "run")
        run_cli(config, "subscribers", "export", str(tmp_path / "out" / "all.csv"))
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    files = [tmp_path / "subscribers.db", tmp_path / "out" / "all.csv", *(tmp_path / "outbox").rglob("*.eml")]
    files += [p for p in tmp_path.glob("subscribers.db-*")]
    assert len(files) >= 3 and {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    folders = [tmp_path / "outbox", *(p for p in (tmp_path / "outbox").rglob("*") if p.is_dir())]
    assert {p.name: mode(p) for p in folders} == {p.name: 0o700 for p in folders}


def test_the_folders_made_for_the_secret_key_and_the_dkim_key_are_0700_under_umask_000(
    tmp_path: Path,
) -> None:
    import os
    import stat

    config = write_config(tmp_path)
    text = config.read_text().replace(
        'timezone = "UTC"\n', 'timezone = "UTC"\nsecret_key_file = "keys/secret/key"\n'
    )
    dkim = '[dkim]\ndomain = "example.com"\nselector = "news"\nprivate_key_file = "dkim/k/news.pem"\n'
    config.write_text(text + "\n" + dkim)
    old = os.umask(0)
    try:
        run_cli(config, "init", extra_env={"NEWSLETTER_SECRET_KEY": ""})  # so the key file is written
        run_cli(config, "dkim-keygen", "--bits", "1024")
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    folders = [tmp_path / "keys", tmp_path / "keys/secret", tmp_path / "dkim", tmp_path / "dkim/k"]
    assert {str(p): mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    keys = [tmp_path / "keys/secret/key", tmp_path / "dkim/k/news.pem"]
    assert {str(p): mode(p) for p in keys} == {str(p): 0o600 for p in keys}

"""`newsletter bounces` on a Maildir, an mbox and an IMAP server over TLS: the right subscribers end
bounced or complained, nothing else changes, a second run changes nothing, garbage is reported."""

from __future__ import annotations

import email.iterators
import json
import mailbox
import smtplib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.bounces import classify as classify_module
from newsletter.bounces import processing
from newsletter.bounces.classify import Classified, classify
from newsletter.bounces.policy import BouncePolicy, Verdict
from newsletter.bounces.processing import process_bounces
from newsletter.config import load_settings
from newsletter.db.models import BounceEvent, BounceMail, Delivery, SubscriberStatus
from newsletter.delivery.tokens import Tokens, verp_address
from newsletter.operators import hash_password
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber
from newsletter.web import create_app

from ..support import bounce_mails as m
from ..support.helpers import (
    PASSWORD,
    SECRET,
    SmtpSink,
    assert_tally_counts,
    log_in,
    run_cli,
    wait_for,
    write_config,
)
from ..support.imap_server import ImapServer
from ..support.postfix_server import PrivatePostfix
from ..support.web import confirm_link

TOKENS = Tokens(SECRET)
RETURN_PATH = "bounces@example.com"


class Newsletter:
    """A config with [bounces], ten (or `readers`) active subscribers and one issue sent to them
    (to the outbox, or to an SMTP server on 127.0.0.1)."""

    def __init__(
        self,
        folder: Path,
        mailbox_spec: str = "maildir:bounces",
        soft_limit: int = 2,
        database_url: str | None = None,
        readers: int = 10,
        smtp_port: int | None = None,  # sent to this SMTP server on 127.0.0.1, not to the outbox
    ) -> None:
        self.folder = folder
        smtp = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n' if smtp_port else ""
        self.config = write_config(
            folder,
            database_url=database_url,
            extra=f'[bounces]\nreturn_path = "{RETURN_PATH}"\nmailbox = "{mailbox_spec}"\n'
            f"soft_bounce_limit = {soft_limit}\nsoft_bounce_window_days = 30\n{smtp}",
            **({"delivery": 'transport = "smtp"'} if smtp_port else {}),
        )
        run_cli(self.config, "init")
        self.store = Store(database_url or f"sqlite:///{folder / 'subscribers.db'}")
        self.store.import_subscribers(
            [NewSubscriber(f"r{i}@example.org", None) for i in range(readers)], now=datetime.now(UTC)
        )
        run_cli(self.config, "run")
        self.issue_id = self.store.list_issues()[0].id

    def id(self, n: int) -> int:
        sub = self.store.get_subscriber(f"r{n}@example.org")
        assert sub is not None
        return sub.id

    def verp(self, n: int) -> str:
        return verp_address(RETURN_PATH, TOKENS.bounce(self.issue_id, self.id(n)))

    def original(self, n: int, *, to: str | None = None) -> str:
        url = f"https://news.example.com/unsubscribe/{TOKENS.unsubscribe(self.id(n))}"
        return m.original_headers(to=to or f"r{n}@example.org", unsubscribe_url=url, issue_id=self.issue_id)

    def statuses(self) -> dict[str, str]:
        return {s.email: s.status for s in self.store.iter_subscribers()}

    def statuses_of(self, *readers: int) -> list[str]:
        """The statuses of readers rN@example.org, in the order given."""
        statuses = self.statuses()
        return [statuses[f"r{n}@example.org"] for n in readers]

    def dsn(self, n: int, status: str, diagnostic: str, *, verp: str | None = None) -> bytes:
        """A Gmail-style DSN for reader n, to their VERP address unless `verp` says another."""
        return m.gmail_dsn(
            verp=verp or self.verp(n),
            recipient=f"r{n}@example.org",
            status=status,
            diagnostic=diagnostic,
            original=self.original(n),
        )

    def soft_bounce(self, n: int, when: str, *, verp: str | None = None) -> bytes:
        full = f"452-4.2.2 The recipient's inbox is out of storage space ({when})."
        return self.dsn(n, "4.2.2", full, verp=verp)

    def mails(self) -> list[bytes]:
        return [
            # r1: VERP; the report names the address the mail was forwarded to, not r1's
            m.postfix_dsn(
                verp=self.verp(1), final_recipient="r1.old@forward.example", original=self.original(1)
            ),
            # r2: a server that returns to the plain address: only the signed unsubscribe link in the
            # copy names r2, a link a reader may pass on: it may at most unsubscribe r2
            m.exim_bounce(to=RETURN_PATH, failed="r2@example.org", original=self.original(2)),
            self.dsn(3, "5.1.1", "550-5.1.1 The email account that you tried to reach does not exist."),
            # r4: a complaint whose report hides the recipient: found by the VERP address it names
            m.arf_report(
                fbl_to="abuse@example.com",
                original=self.original(4, to="redacted@redacted"),
                original_mail_from=self.verp(4),
            ),
            m.vacation_reply(sender="R Five <r5@example.org>", verp=self.verp(5)),
            self.soft_bounce(6, "first"),
            m.delay_warning(verp=self.verp(7), recipient="r7@example.org"),
            # a forged token for r9, and nothing else we signed: it changes nobody
            m.postfix_dsn(
                verp=f"bounces+{self.issue_id}-{self.id(9)}-aaaaaaaaaaaaaaaa@example.com",
                final_recipient="stranger@elsewhere.example",
                original=m.original_headers(
                    to="r9@example.org", unsubscribe_url="https://news.example.com/", issue_id=self.issue_id
                ),
            ),
            m.GARBAGE,
        ]

    def counts(self) -> tuple[int, int]:
        with self.store.read() as s:
            return (
                s.scalar(select(func.count()).select_from(BounceMail)) or 0,
                s.scalar(select(func.count()).select_from(BounceEvent)) or 0,
            )


def test_classify_each_kind() -> None:
    verp = verp_address(RETURN_PATH, TOKENS.bounce(5, 17))
    original = m.original_headers(to="x@example.org", unsubscribe_url="https://n/unsubscribe/t", issue_id=5)

    def kind(data: bytes) -> str:
        return classify(data, tokens=TOKENS, return_path=RETURN_PATH).kind

    hard = classify(
        m.postfix_dsn(verp=verp, final_recipient="x@example.org", original=original),
        tokens=TOKENS,
        return_path=RETURN_PATH,
    )
    assert hard.kind == "bounce" and len(hard.events) == 1
    e = hard.events[0]
    assert (e.kind, e.issue_id, e.subscriber_id, e.status, e.signed_by) == ("hard", 5, 17, "5.1.1", "verp")
    assert "User unknown" in e.detail
    # no VERP, and an unsubscribe link we did not sign: kept for review, whatever it names
    assert kind(m.exim_bounce(to=RETURN_PATH, failed="x@example.org", original=original)) == "review"
    signed = m.original_headers(
        to="x@example.org", unsubscribe_url=f"https://n/unsubscribe/{TOKENS.unsubscribe(17)}", issue_id=5
    )
    exim = classify(
        m.exim_bounce(to=RETURN_PATH, failed="x@example.org", original=signed),
        tokens=TOKENS,
        return_path=RETURN_PATH,
    )
    # the link names the reader, never an issue: the copy's Feedback-ID is not signed
    assert exim.kind == "bounce"
    assert (exim.events[0].subscriber_id, exim.events[0].issue_id, exim.events[0].signed_by) == (
        17,
        None,
        "link",
    )
    assert kind(m.delay_warning(verp=verp, recipient="x@example.org")) == "delayed"
    delivered = m.delay_warning(verp=verp, recipient="x@example.org").replace(
        b"Action: delayed", b"Action: relayed"
    )
    assert kind(delivered.replace(b"Status: 4.4.1", b"Status: 2.0.0")) == "delivered"  # a notice, no bounce
    assert kind(m.vacation_reply(sender="x@example.org", verp=verp)) == "auto_reply"
    assert kind(m.arf_report(fbl_to="abuse@example.com", original=original)) == "review"
    assert kind(m.arf_report(fbl_to="abuse@example.com", original=signed)) == "complaint"
    assert kind(m.GARBAGE) == "unrecognised"
    assert (
        kind(b"From: a friend <f@example.org>\r\nSubject: hello\r\n\r\nThanks for the digest!\r\n")
        == "unrecognised"
    )
    # an ARF that names the VERP address it came from
    arf = classify(
        m.arf_report(fbl_to="abuse@example.com", original=original, original_mail_from=verp),
        tokens=TOKENS,
        return_path=RETURN_PATH,
    )
    assert arf.events[0].kind == "complaint" and arf.events[0].subscriber_id == 17


def test_a_maildir_run_marks_the_right_subscribers_and_a_second_run_changes_nothing(
    tmp_path: Path, env: None
) -> None:
    nl = Newsletter(tmp_path)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    for data in nl.mails():
        box.add(data)
    first = run_cli(nl.config, "bounces")
    after = nl.statuses()
    assert after == {
        "r0@example.org": "active",
        "r1@example.org": "bounced",
        "r2@example.org": "unsubscribed",  # named only by an unsubscribe link
        "r3@example.org": "bounced",
        "r4@example.org": "complained",
        "r5@example.org": "active",  # a vacation reply
        "r6@example.org": "active",  # one soft bounce of 2
        "r7@example.org": "active",  # a delay warning
        "r8@example.org": "active",
        "r9@example.org": "active",  # a forged token
    }, first.stdout
    assert "read 9 new mails" in first.stdout
    assert "r1@example.org: now bounced" in first.stdout and "r4@example.org: now complained" in first.stdout
    assert "r2@example.org: named only by an unsubscribe link: now unsubscribed" in first.stdout
    assert "soft 4.2.2 r6@example.org: soft bounce 1 of 2" in first.stdout
    assert "not understood, left in the mailbox" in first.stderr and first.stderr.count("maildir:") == 1
    # the issue's deliveries say so too; the mailbox keeps every mail
    deliveries = nl.store.issue_counts(nl.issue_id)[0].deliveries
    assert deliveries["bounced"] == 2 and deliveries["sent"] == 8
    assert assert_tally_counts(nl.store, nl.issue_id) == {"bounced": 2, "sent": 8}
    assert len(box) == 9

    run_cli(nl.config, "subscribers", "remove", "r8@example.org")  # counts against the issue it last had
    status = run_cli(nl.config, "status")
    assert "warning: issue" in status.stderr and "complaints from 10.00%" in status.stderr
    engagement = json.loads(run_cli(nl.config, "status", "--json").stdout)["issues"][0]["engagement"]
    assert engagement["accepted"] == 10 and engagement["hard_bounced"] == 2
    assert (
        engagement["soft_bounced"] == 1 and engagement["complained"] == 1 and engagement["unsubscribed"] == 2
    )
    assert engagement["rates"]["complained"] == 0.1 and engagement["complaint_warning"] is True
    # the console's issue page gives the same warning, from the same rule (newsletter.reports)
    nl.store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    web = create_app(load_settings(nl.config), store=nl.store).test_client()
    assert log_in(web) == 302
    page = web.get(f"/admin/issues/{nl.issue_id}").get_data(as_text=True)
    assert 'id="complaints"' in page and "drew complaints from 10.00%" in page

    after["r8@example.org"] = "unsubscribed"
    recorded = nl.counts()
    second = run_cli(nl.config, "bounces", "--json")
    report = json.loads(second.stdout)
    assert report["read"] == 0 and report["already_read"] == 9 and report["changes"] == []
    assert nl.statuses() == after and nl.counts() == recorded

    box.add(nl.soft_bounce(6, "second"))  # the second soft bounce within the window: bounced
    third = run_cli(nl.config, "bounces")
    assert "r6@example.org: soft bounce 2 of 2 within 30 days, now bounced" in third.stdout
    assert nl.statuses()["r6@example.org"] == "bounced"
    nl.store.close()


def test_an_mbox_works_the_same(tmp_path: Path) -> None:
    nl = Newsletter(tmp_path, mailbox_spec="mbox:bounces.mbox")
    box = mailbox.mbox(tmp_path / "bounces.mbox", create=True)
    box.add(nl.mails()[0])
    box.add(nl.mails()[3])
    box.close()
    run_cli(nl.config, "bounces")
    statuses = nl.statuses()
    assert statuses["r1@example.org"] == "bounced" and statuses["r4@example.org"] == "complained"
    assert list(statuses.values()).count("active") == 8
    nl.store.close()


def test_a_missing_mailbox_and_a_missing_section_are_one_sentence(tmp_path: Path) -> None:
    nl = Newsletter(tmp_path)
    missing = run_cli(nl.config, "bounces", check=False)
    assert (
        missing.returncode == 1 and "bounce mailbox" in missing.stderr and "does not exist" in missing.stderr
    )
    (tmp_path / "plain").mkdir()
    plain = write_config(tmp_path / "plain")
    none = run_cli(plain, "bounces", check=False)
    assert none.returncode == 2 and "[bounces]" in none.stderr
    nl.store.close()


@pytest.fixture
def imap(certificate: tuple[Path, Path], tmp_path: Path) -> ImapServer:
    return ImapServer(*certificate, user="bounces@example.com", password="s3cret pass", messages=[])


def test_an_imap_mailbox_over_tls(tmp_path: Path, imap: ImapServer, certificate: tuple[Path, Path]) -> None:
    spec = f"imaps://bounces%40example.com@127.0.0.1:{imap.port}/INBOX"
    nl = Newsletter(tmp_path, mailbox_spec=spec)
    imap.messages[:] = nl.mails()
    env = {"NEWSLETTER_BOUNCE_PASSWORD": "s3cret pass", "SSL_CERT_FILE": str(certificate[0])}
    try:
        first = run_cli(nl.config, "bounces", extra_env=env)
        assert "read 9 new mails" in first.stdout
        # r2 is named only by an unsubscribe link
        assert nl.statuses_of(1, 2, 3, 4) == ["bounced", "unsubscribed", "bounced", "complained"]
        assert list(nl.statuses().values()).count("active") == 6
        # read-only: examined, peeked, never stored a flag, copied or expunged
        assert any(c.startswith("EXAMINE") for c in imap.commands)
        assert not any(c.split()[0] in ("STORE", "COPY", "EXPUNGE", "MOVE") for c in imap.commands)
        assert all("BODY.PEEK[]" in c for c in imap.commands if "FETCH" in c)
        fetched = sum("FETCH" in c for c in imap.commands)
        second = run_cli(nl.config, "bounces", extra_env=env)
        assert "read 0 new mails" in second.stdout
        assert sum("FETCH" in c for c in imap.commands) == fetched  # known UIDs are not fetched again
        wrong = run_cli(
            nl.config, "bounces", extra_env={**env, "NEWSLETTER_BOUNCE_PASSWORD": "nope"}, check=False
        )
        assert wrong.returncode == 1 and "refused the login" in wrong.stderr
        untrusted = run_cli(nl.config, "bounces", extra_env={"NEWSLETTER_BOUNCE_PASSWORD": "x"}, check=False)
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        imap.close()
        nl.store.close()


def test_the_scheduler_reads_the_mailbox_and_logs_what_changed(tmp_path: Path, env: None) -> None:
    from newsletter.config import load_settings
    from newsletter.schedule import Scheduler

    nl = Newsletter(tmp_path)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(nl.mails()[0])
    box.add(m.GARBAGE)
    lines: list[tuple[str, dict[str, object]]] = []
    scheduler = Scheduler(
        load_settings(nl.config), nl.store, emit=lambda line, fields: lines.append((line, fields))
    )
    scheduler.check_bounces()
    messages = [line for line, _ in lines]
    assert messages[0] == "bounces read=2 bounce=1 unrecognised=1 changes=1"
    assert any("r1@example.org: now bounced" in x for x in messages)
    assert any("not understood, left in the mailbox: maildir:" in x for x in messages)
    assert lines[0][1] == {"event": "bounces", "read": 2, "bounce": 1, "unrecognised": 1, "changes": 1}
    lines.clear()
    scheduler.check_bounces()  # nothing new: nothing said
    assert lines == []
    nl.store.close()


def test_forged_reports_change_nobody_and_are_kept_for_review(tmp_path: Path) -> None:
    """Anybody can mail the bounce address: a report that names an address, with nothing we signed,
    changes nobody's status, whatever it says."""
    nl = Newsletter(tmp_path)
    unsigned = m.original_headers(
        to="r8@example.org",
        unsubscribe_url="https://news.example.com/unsubscribe/Zm9yZ2Vk.forgedforgedforged",
        issue_id=nl.issue_id,
    )
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(m.postfix_dsn(verp=RETURN_PATH, final_recipient="r8@example.org", original=unsigned))
    box.add(m.exim_bounce(to=RETURN_PATH, failed="r0@example.org", original=unsigned))
    box.add(m.arf_report(fbl_to="abuse@example.com", original=unsigned, original_rcpt_to="<r7@example.org>"))
    box.add(m.arf_report(fbl_to="abuse@example.com", original=unsigned))  # names r8 in the copy's To
    report = json.loads(run_cli(nl.config, "bounces", "--json").stdout)
    assert set(nl.statuses().values()) == {"active"}, report
    assert report["kinds"] == {"review": 4}
    assert all("kept for review; nothing changed" in line for line in report["changes"])
    with nl.store.read() as s:
        events = list(s.scalars(select(BounceEvent)))
    assert {e.address for e in events} == {"r0@example.org", "r7@example.org", "r8@example.org"}
    assert all(e.subscriber_id is None for e in events)
    assert len(nl.store.bounce_mails_for_review(limit=10)) == 4
    nl.store.close()


def test_a_mail_that_breaks_never_stops_the_others(
    tmp_path: Path, store: Store, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge Feedback-ID, a NUL in a diagnostic (PostgreSQL refuses NUL) and a mail that breaks the
    reader itself: each handled alone, the broken one recorded and reported once."""
    nl = Newsletter(tmp_path, database_url=store.url)
    huge = nl.original(1).replace(f"Feedback-ID: {nl.issue_id}:", "Feedback-ID: 99999999999999999999999:")
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(m.exim_bounce(to=RETURN_PATH, failed="r1@example.org", original=huge))
    box.add(nl.dsn(2, "5.1.1", "550-5.1.1 no such user \x00 here"))
    box.add(nl.soft_bounce(3, "first") + b"\r\nX-Break-The-Reader: yes\r\n")
    box.add(nl.dsn(4, "5.1.1", "550 gone"))
    real = processing.classify

    def breaks_on_marked_mail(data: bytes, **kwargs: object) -> Classified:
        if b"X-Break-The-Reader" in data:
            raise RuntimeError("a bug in the reader")
        return real(data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(processing, "classify", breaks_on_marked_mail)
    settings = load_settings(nl.config)
    first = process_bounces(settings, nl.store, now=datetime.now(UTC))
    statuses = nl.statuses()
    assert [statuses[f"r{i}@example.org"] for i in (1, 2, 3, 4)] == [
        "unsubscribed",  # named only by its unsubscribe link
        "bounced",
        "active",
        "bounced",
    ]
    assert first.read == 4 and first.kinds == {"bounce": 3, "unreadable": 1}
    (broken,) = first.unrecognised
    assert "could not be handled: RuntimeError: a bug in the reader" in broken
    again = process_bounces(settings, nl.store, now=datetime.now(UTC))
    assert again.read == 0 and again.already_read == 4 and again.unrecognised == []
    with nl.store.read() as s:
        issue_ids = set(s.scalars(select(BounceEvent.issue_id)))
    assert issue_ids <= {nl.issue_id, None}  # the huge Feedback-ID names no issue of ours
    nl.store.close()


def test_the_bounce_policy_alone() -> None:
    """One rule, judged without a database: what each kind of report does to each subscriber."""
    policy = BouncePolicy(soft_limit=2, soft_window=timedelta(days=30))

    def judge(
        kind: str,
        current: SubscriberStatus | None,
        soft: int = 0,
        signed_by: str = "verp",
        sent_ago: timedelta | None = timedelta(days=1),
    ) -> Verdict:
        return policy.judge(
            kind=kind,
            code="5.1.1",
            address="a@example.org",
            signed_by=signed_by,
            current=current,
            soft_count=soft,
            sent_ago=sent_ago,
        )

    active, gone = SubscriberStatus.ACTIVE, SubscriberStatus.UNSUBSCRIBED
    assert judge("hard", active)[:3] == (SubscriberStatus.BOUNCED, True, True)
    assert judge("hard", gone)[:3] == (None, True, True)  # counted; an unsubscribed address stays so
    assert judge("complaint", gone)[:3] == (SubscriberStatus.COMPLAINED, False, False)
    assert judge("complaint", SubscriberStatus.COMPLAINED).line.endswith("already complained")
    assert judge("soft", active, soft=1)[:3] == (None, False, False)
    assert judge("soft", active, soft=2)[:3] == (SubscriberStatus.BOUNCED, True, False)
    assert judge("soft", gone, soft=5)[0] is None
    # named only by an unsubscribe link (in every copy a reader passes on): at most unsubscribed
    for kind in ("hard", "complaint"):
        assert judge(kind, active, signed_by="link")[:3] == (SubscriberStatus.UNSUBSCRIBED, False, False)
        assert judge(kind, SubscriberStatus.PENDING, signed_by="link")[0] == SubscriberStatus.UNSUBSCRIBED
        assert judge(kind, gone, signed_by="link")[:3] == (None, False, False)
    assert judge("soft", active, soft=9, signed_by="link")[:3] == (None, False, False)
    nobody = judge("hard", None, signed_by="")
    assert nobody[:3] == (None, False, False) and "kept for review; nothing changed" in nobody.line
    assert "no such subscriber" in judge("hard", None).line
    # a VERP address is believed within its window after its mail went out, and not without one
    days = timedelta(days=1)
    for kind, window in (("hard", 10 * days), ("soft", 10 * days), ("complaint", 30 * days)):
        assert not judge(kind, active, soft=9, sent_ago=window).refused
        for ago in (window + timedelta(seconds=1), None):
            refused = judge(kind, active, soft=9, sent_ago=ago)
            assert (
                refused[:3] == (None, False, False) and refused.refused and "kept for review" in refused.line
            )


@pytest.fixture
def postfix() -> Iterator[PrivatePostfix]:
    """Debian's Postfix as a private instance on 127.0.0.1: readers' addresses behind aliases, one
    domain that refuses (5.1.1), one that defers (4.3.0) and is given up at the first try."""
    server = PrivatePostfix(
        domain="example.org",
        aliases={
            "r0@example.org": ["r0.old@gone.example"],
            "r1@example.org": ["r1.home@full.example"],
            "r2@example.org": ["r2.a@full.example", "r2.b@full.example", "r2.c@full.example"],
            "r3@example.org": ["r3@kept.example"],
        },
        transports={
            "gone.example": "error:5.1.1 mailbox unknown",
            "full.example": "retry:4.3.0 mailbox temporarily unavailable",
            "kept.example": "discard:delivered",
        },
        bounce_address=RETURN_PATH,
    )
    yield server
    server.close()


def sent_through(postfix: PrivatePostfix, folder: Path) -> tuple[Newsletter, list[bytes]]:
    """An issue sent to r0-r3 through the private Postfix, and the three DSNs it returned."""
    nl = Newsletter(
        folder,
        mailbox_spec=f"maildir:{postfix.bounce_maildir}",
        soft_limit=3,
        readers=4,
        smtp_port=postfix.port,
    )
    assert wait_for(lambda: len(postfix.returned()) == 3, timeout=30), postfix.log_text()
    return nl, [path.read_bytes() for path in postfix.returned()]


def test_a_real_postfix_dsn_gives_one_event_per_reader_with_its_own_status(
    tmp_path: Path, postfix: PrivatePostfix
) -> None:
    """The DSNs a real Postfix writes after an alias (Original-Recipient is the reader's address,
    Final-Recipient the rewritten one): a 5.1.1 is one hard event and its text stays on the
    delivery; a 4.3.0 given up is one soft bounce, never also a hard one; a reader the DSN lists
    three times (an alias to three mailboxes) counts once."""
    nl, dsns = sent_through(postfix, tmp_path)
    assert all(b"Original-Recipient: rfc822;r" in d and b"Final-Recipient: rfc822; r" in d for d in dsns)
    assert sorted(d.count(b"Final-Recipient:") for d in dsns) == [1, 1, 3]
    report = json.loads(run_cli(nl.config, "bounces", "--json").stdout)
    assert nl.statuses() == {
        "r0@example.org": "bounced",
        "r1@example.org": "active",
        "r2@example.org": "active",
        "r3@example.org": "active",
    }, report
    assert sorted(report["changes"]) == [
        "hard 5.1.1 r0@example.org: now bounced",
        "soft 4.3.0 r1@example.org: soft bounce 1 of 3 within 30 days",
        "soft 4.3.0 r2@example.org: soft bounce 1 of 3 within 30 days",
    ]
    with nl.store.read() as s:
        events = sorted((e.subscriber_id, e.kind, e.status) for e in s.scalars(select(BounceEvent)))
        bounced = s.scalars(select(Delivery).where(Delivery.status == "bounced")).one()
    assert events == [(nl.id(0), "hard", "5.1.1"), (nl.id(1), "soft", "4.3.0"), (nl.id(2), "soft", "4.3.0")]
    assert bounced.subscriber_id == nl.id(0)
    assert bounced.last_reply == "bounced later: 5.1.1 mailbox unknown"
    assert nl.store.get_subscriber("r0@example.org").bounce_count == 1  # type: ignore[union-attr]

    # the same DSN without our VERP address: the copy's unsubscribe link names r2, once
    (listed_thrice,) = [d for d in dsns if d.count(b"Final-Recipient:") == 3]
    unsigned = classify(
        listed_thrice.replace(nl.verp(2).encode(), RETURN_PATH.encode()),
        tokens=TOKENS,
        return_path=RETURN_PATH,
    )
    assert [(e.subscriber_id, e.kind, e.signed_by) for e in unsigned.events] == [(nl.id(2), "soft", "link")]
    nl.store.close()


def test_a_leaked_unsubscribe_link_at_most_unsubscribes_and_a_signup_brings_the_reader_back(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    """A forged ARF report and a forged 5.1.1 DSN that carry a reader's unsubscribe link (it is in
    every copy a reader passes on, and a leaked one was read by a feed's image server) but not our
    VERP address: the reader is unsubscribed, never complained or bounced, no issue is charged (the
    copy's Feedback-ID names one, unsigned), soft bounces so named are not counted, and a signup
    brings the reader back. The same reports through our VERP address close the address."""
    nl = Newsletter(tmp_path, smtp_port=smtp_sink.port)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(m.arf_report(fbl_to="abuse@example.com", original=nl.original(1)))
    hard = "550-5.1.1 The email account that you tried to reach does not exist."
    box.add(nl.dsn(2, "5.1.1", hard, verp=RETURN_PATH))
    for n in range(3):
        box.add(nl.soft_bounce(3, str(n), verp=RETURN_PATH))
    box.add(m.arf_report(fbl_to="abuse@example.com", original=nl.original(4), original_mail_from=nl.verp(4)))
    box.add(nl.dsn(5, "5.1.1", hard))
    settings = load_settings(nl.config)
    report = process_bounces(settings, nl.store, now=datetime.now(UTC)).as_json()
    assert nl.statuses_of(1, 2, 3, 4, 5) == [
        "unsubscribed",
        "unsubscribed",
        "active",
        "complained",
        "bounced",
    ], report
    assert (
        "complaint r1@example.org: named only by an unsubscribe link: now unsubscribed" in report["changes"]
    )
    assert (
        report["changes"].count("soft 4.2.2 r3@example.org: named only by an unsubscribe link, not counted")
        == 3
    )
    with nl.store.read() as s:
        issues = {(e.address, e.kind): e.issue_id for e in s.scalars(select(BounceEvent))}
        replies = dict(s.execute(select(Delivery.subscriber_id, Delivery.status)).all())
    assert issues == {
        ("r1@example.org", "complaint"): None,
        ("r2@example.org", "hard"): None,
        ("r3@example.org", "soft"): None,
        ("r4@example.org", "complaint"): nl.issue_id,
        ("r5@example.org", "hard"): nl.issue_id,
    }
    assert replies[nl.id(2)] == "sent" and replies[nl.id(5)] == "bounced"
    assert nl.store.get_subscriber("r2@example.org").bounce_count == 0  # type: ignore[union-attr]
    engagement = json.loads(run_cli(nl.config, "status", "--json").stdout)["issues"][0]["engagement"]
    assert (engagement["complained"], engagement["hard_bounced"], engagement["unsubscribed"]) == (1, 1, 2)
    box.add(nl.soft_bounce(3, "through our VERP address"))  # the link-named ones were not counted
    assert (
        "soft 4.2.2 r3@example.org: soft bounce 1 of 2 within 30 days" in run_cli(nl.config, "bounces").stdout
    )

    # the web signup: an unsubscribed reader may come back; a complained or bounced one is mailed a
    # confirmation too, and stays closed until it is confirmed
    app = create_app(settings, store=nl.store)
    client = app.test_client()
    smtp_sink.messages.clear()
    for n in (1, 2, 4, 5):
        assert client.post("/subscribe", data={"email": f"r{n}@example.org"}).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    statuses = nl.statuses()
    assert [statuses[f"r{n}@example.org"] for n in (1, 2, 4, 5)] == [
        "pending",
        "pending",
        "complained",
        "bounced",
    ]
    assert sorted(smtp_sink.by_recipient()) == [f"r{n}@example.org" for n in (1, 2, 4, 5)]
    assert client.post(confirm_link(smtp_sink, "r1@example.org")).status_code == 200
    assert nl.statuses()["r1@example.org"] == "active"
    nl.store.close()


def test_a_huge_bounce_mail_is_read_from_its_first_part_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """flufl.bounce's heuristics cost about 150 µs a line (a MB of blank lines: 10 s and more). A
    5 MB bounce is read from its headers and first parts, which say all a report says: a DSN's
    recipient blocks, a non-standard bounce's failed address, the returned copy's headers."""
    verp = verp_address(RETURN_PATH, TOKENS.bounce(5, 17))
    original = m.original_headers(to="x@example.org", unsubscribe_url="https://n/unsubscribe/t", issue_id=5)
    padding = b"\r\n" * (5 * 1024 * 1024 // 2)  # the cheapest lines to send, the dearest to scan
    exim = m.exim_bounce(to=verp, failed="x@example.org", original=original) + padding
    dsn = m.postfix_dsn(verp=verp, final_recipient="x@example.org", original=original)
    dsn = dsn.replace(
        b"\r\n--7C2F1B20A4.1764054072/mx1.mail.example.net--",
        padding + b"--7C2F1B20A4.1764054072/mx1.mail.example.net--",
    )
    scanned: list[int] = []
    real = classify_module.all_failures

    def counting(msg: Message) -> tuple[set[bytes], set[bytes]]:
        scanned.append(sum(1 for _ in email.iterators.body_line_iterator(msg)))
        return real(msg)

    monkeypatch.setattr(classify_module, "all_failures", counting)
    for data in (exim, dsn):
        assert len(data) > 5 * 1024 * 1024
        found = classify(data, tokens=TOKENS, return_path=RETURN_PATH)
        assert found.kind == "bounce", found
        assert [(e.kind, e.subscriber_id, e.issue_id, e.status) for e in found.events] == [
            ("hard", 17, 5, "5.1.1")
        ]
        assert f"of {len(data):,} bytes" in found.note
    assert scanned and max(scanned) <= classify_module.BOUNCE_READ_LINES  # the Exim bounce's text, cut


def test_a_delivered_copy_wrapped_in_a_forged_report_closes_nobody_for_good(
    tmp_path: Path, smtp_sink: SmtpSink, env: None
) -> None:
    """A reader's delivered copy carries our VERP address in the Return-Path their server wrote
    (reproduced from an outside report: a copy forwarded as an attachment). Wrapped in a forged
    DSN, with the VERP address also in a To: and a Delivered-To: the forger wrote below the
    delivery headers of our own mailbox, it changes nobody and is listed on the console's Bounce
    mail page: a bounce comes back to the VERP address of the mail that failed, and a delivered
    copy never failed. Wrapped in a forged ARF report it reads as a feedback loop's report does
    (they quote the reported copy so), so the reader is `complained`; their signup sends them one
    confirmation, and confirming it makes them active again."""
    nl = Newsletter(tmp_path, smtp_port=smtp_sink.port)
    copies = {
        n: m.delivered_copy(
            smtp_sink.by_recipient()[f"r{n}@example.org"][0].data, verp=nl.verp(n), reader=f"r{n}@example.org"
        )
        for n in (1, 2)
    }
    ours = "Delivered-To: bounces@example.com\nReceived: from attacker.example by mx.example.com\n"
    forged_top = f"To: {nl.verp(1)}\nDelivered-To: {nl.verp(1)}\n"
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(m.wrapped_in_report("dsn", copies[1], failed="r1@example.org"))  # as the outside report's
    box.add(m.wrapped_in_report("dsn", copies[1], failed="r1@example.org", headers=ours + forged_top))
    box.add(m.wrapped_in_report("arf", copies[2], failed="r2@example.org"))
    report = process_bounces(load_settings(nl.config), nl.store, now=datetime.now(UTC)).as_json()
    statuses = nl.statuses()
    assert (statuses["r1@example.org"], statuses["r2@example.org"]) == ("active", "complained"), report
    assert report["kinds"] == {"review": 2, "complaint": 1}
    with nl.store.read() as s:
        r1 = s.scalars(select(Delivery).where(Delivery.subscriber_id == nl.id(1))).one()
        named = set(s.scalars(select(BounceEvent.subscriber_id)))
    assert r1.status == "sent" and named == {None, nl.id(2)}
    review = nl.store.bounce_mails_for_review(limit=10)
    assert len(review) == 2
    assert all(
        f"subscriber {nl.id(1)}'s delivered copy of issue {nl.issue_id}" in mail.note for mail, _ in review
    )
    nl.store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    web = create_app(load_settings(nl.config), store=nl.store).test_client()
    assert log_in(web) == 302
    page = web.get("/admin/bounces").get_data(as_text=True)
    assert page.count("the bounce did not come back to that address") == 2 and "r1@example.org" in page

    app = create_app(load_settings(nl.config), store=nl.store)
    smtp_sink.messages.clear()
    assert app.test_client().post("/subscribe", data={"email": "r2@example.org"}).status_code == 200
    assert app.extensions["newsletter"].confirmations.wait_idle()
    assert nl.statuses()["r2@example.org"] == "complained"  # until its owner confirms
    assert app.test_client().post(confirm_link(smtp_sink, "r2@example.org")).status_code == 200
    assert nl.statuses()["r2@example.org"] == "active"
    nl.store.close()


def test_a_verp_address_is_believed_only_within_its_window_after_the_send(tmp_path: Path, env: None) -> None:
    """The tokens never expire and every delivered copy shows one, so a report through a VERP
    address is believed for BOUNCE_WINDOW (10 days: a real bounce comes within the sender's
    5-day queue lifetime) or COMPLAINT_WINDOW (30 days) after its mail went out, a confirmation's
    as an issue's. An older one changes nobody, counts nowhere and is listed for review."""
    from newsletter.bounces.policy import BOUNCE_WINDOW, COMPLAINT_WINDOW
    from newsletter.delivery.records import NO_ISSUE

    nl = Newsletter(tmp_path)
    settings = load_settings(nl.config)
    with nl.store.read() as s:
        sent = s.scalars(select(Delivery.sent_at).where(Delivery.subscriber_id == nl.id(1))).one()
    assert sent is not None
    hard = "550-5.1.1 The email account that you tried to reach does not exist."
    box = mailbox.Maildir(tmp_path / "bounces", create=True)

    def arrives(data: bytes, after: timedelta) -> dict[str, object]:
        box.add(data)
        return process_bounces(settings, nl.store, now=sent + after).as_json()

    def complaint(n: int) -> bytes:
        return m.arf_report(
            fbl_to="abuse@example.com", original=nl.original(n), original_mail_from=nl.verp(n)
        )

    late = arrives(nl.dsn(1, "5.1.1", hard), BOUNCE_WINDOW + timedelta(hours=1))
    assert late["kinds"] == {"review": 1} and "went out 10 days ago" in str(late["changes"])
    assert arrives(nl.soft_bounce(2, "late"), BOUNCE_WINDOW + timedelta(hours=1))["kinds"] == {"review": 1}
    assert arrives(complaint(3), COMPLAINT_WINDOW + timedelta(hours=1))["kinds"] == {"review": 1}
    # the same reports within their windows
    assert arrives(nl.dsn(4, "5.1.1", hard), BOUNCE_WINDOW - timedelta(hours=1))["kinds"] == {"bounce": 1}
    assert arrives(complaint(5), COMPLAINT_WINDOW - timedelta(hours=1))["kinds"] == {"complaint": 1}
    # a confirmation's bounce: from the time it was sent
    pending, _ = nl.store.request_subscription(
        "new@example.org",
        None,
        ip=None,
        now=sent,
        resend_after=timedelta(0),
        closed_resend_after=timedelta(0),
    )
    nl.store.confirmation_sent(pending.id, now=sent)
    to_confirmation = verp_address(RETURN_PATH, TOKENS.bounce(NO_ISSUE, pending.id))
    assert arrives(nl.dsn(6, "5.1.1", hard, verp=to_confirmation), BOUNCE_WINDOW * 2)["kinds"] == {
        "review": 1
    }
    assert nl.statuses_of(1, 2, 3, 4, 5) == ["active", "active", "active", "bounced", "complained"]
    assert nl.statuses()["new@example.org"] == "pending"
    with nl.store.read() as s:
        named = sorted(
            s.scalars(select(BounceEvent.subscriber_id).where(BounceEvent.subscriber_id.is_not(None)))
        )
        delivery = dict(s.execute(select(Delivery.subscriber_id, Delivery.status)).all())
    assert named == [nl.id(4), nl.id(5)] and delivery[nl.id(1)] == "sent"
    assert nl.store.get_subscriber("r1@example.org").bounce_count == 0  # type: ignore[union-attr]
    assert len(nl.store.bounce_mails_for_review(limit=10)) == 4
    nl.store.close()


def test_a_real_postfix_delivers_the_bounce_to_the_verp_address_and_only_that_closes(
    tmp_path: Path, postfix: PrivatePostfix
) -> None:
    """Through a real Postfix: its own DSN for r0 (a 5.1.1 after an alias) comes back to r0's VERP
    address, which Postfix records in X-Original-To and Delivered-To above everything, and closes
    r0. A forged DSN sent through the same Postfix to the plain bounce address, wrapping r3's
    delivered copy and writing r3's VERP address into its own To: and Delivered-To:, lands below
    Postfix's headers naming the plain address: it changes nobody and is listed for review."""
    nl, genuine = sent_through(postfix, tmp_path)
    assert any(
        d.startswith(f"Return-Path: <>\nX-Original-To: {nl.verp(0)}\nDelivered-To: {nl.verp(0)}\n".encode())
        for d in genuine
    )
    copy = m.delivered_copy(
        m.original_headers(
            to="r3@example.org",
            unsubscribe_url=f"https://news.example.com/unsubscribe/{TOKENS.unsubscribe(nl.id(3))}",
            issue_id=nl.issue_id,
        ).encode(),
        verp=nl.verp(3),
        reader="r3@example.org",
    )
    forged = m.wrapped_in_report(
        "dsn", copy, failed="r3@example.org", headers=f"Delivered-To: {nl.verp(3)}\nTo: {nl.verp(3)}\n"
    )
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as smtp:
        smtp.sendmail("mailer-daemon@attacker.example", [RETURN_PATH], forged)
    assert wait_for(lambda: len(postfix.returned()) == 4, timeout=30), postfix.log_text()
    (delivered,) = [p.read_bytes() for p in postfix.returned() if b"attacker.example" in p.read_bytes()]
    assert delivered.index(f"Delivered-To: {RETURN_PATH}".encode()) < delivered.index(nl.verp(3).encode())
    report = json.loads(run_cli(nl.config, "bounces", "--json").stdout)
    statuses = nl.statuses()
    assert (statuses["r0@example.org"], statuses["r3@example.org"]) == ("bounced", "active"), report
    assert report["kinds"] == {"bounce": 3, "review": 1}
    (refused,) = nl.store.bounce_mails_for_review(limit=10)
    assert f"subscriber {nl.id(3)}'s delivered copy" in refused[0].note
    nl.store.close()

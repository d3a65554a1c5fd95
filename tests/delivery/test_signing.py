"""DKIM signing verified by dkimpy's own verifier (a DNS function stands in for DNS), the bulk-sender
headers, and VERP envelope senders seen by the SMTP server."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest

from newsletter.config import load_settings, mailbox
from newsletter.content.render import GREETING, UNSUBSCRIBE_URL, RenderedIssue
from newsletter.delivery.compose import MessageTemplate, Recipient, confirmation_message
from newsletter.delivery.signing import DkimSigner, dns_record, generate_key
from newsletter.delivery.tokens import BadToken, Tokens, verp_token
from newsletter.store import Store
from newsletter.subscribers.records import NewSubscriber

from ..support.helpers import SECRET, SmtpSink, run_cli, write_config

# one key for the module: generating RSA keys is slow
PEM, PUBLIC = generate_key(2048)
TXT = dns_record(PUBLIC).encode()


def dns(name: bytes, timeout: int = 5) -> bytes | None:
    return TXT if name == b"news._domainkey.example.com." else None


def signer() -> DkimSigner:
    return DkimSigner(domain="example.com", selector="news", private_key_pem=PEM)


def signed_headers(message: bytes) -> list[str]:
    value = re.search(rb"DKIM-Signature:(.*?)\r\n(?=\S)", message, re.S)
    assert value is not None
    tags = dict(t.strip().split("=", 1) for t in value.group(1).decode().replace("\r\n", "").split(";"))
    return [h.strip() for h in tags["h"].split(":")]


HTML = (
    f"<html><body>\n<table>\n    <tr>  <td>{GREETING}</td>\t<td>Caf\u00e9   news</td>  </tr>\n"
    + "<p>"
    + "spaced   words  " * 30
    + f'</p>\n<a href="{UNSUBSCRIBE_URL}">Unsubscribe</a>   \n\n\n</table></body></html>'
)
TEXT = (
    f"{GREETING}   Today's headlines.\n\nTrailing space  \n\tTabbed line\nUnsubscribe: {UNSUBSCRIBE_URL}\n\n"
)


def template(with_signer: DkimSigner | None) -> MessageTemplate:
    return MessageTemplate(
        RenderedIssue(subject="A subject, long enough to fold " * 3, preheader="p", html=HTML, text=TEXT),
        issue_id=7,
        newsletter_name="Test Digest",
        sender=mailbox("Test Digest", "digest@example.com"),
        reply_to=None,
        base_url="https://news.example.com",
        signer=with_signer,
    )


@pytest.mark.parametrize("name", [None, "Ann", "  Zo\u00eb   van  der Berg  ", "Ren\u00e9e " * 20, ".dot"])
def test_a_digest_message_verifies_and_signs_both_list_unsubscribe_headers(name: str | None) -> None:
    message = template(signer()).compose(Recipient(42, "ann@example.org", name, "tok-42.abc"))
    assert dkim.verify(message, dnsfunc=dns)
    h = signed_headers(message)
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h and "from" in h and "to" in h
    assert {"subject", "date", "message-id", "list-id", "feedback-id"} <= set(h)
    # the body hash made from the issue's canonical pieces is the one dkimpy computes from the whole
    _, body = dkim.rfc822_parse(message)
    bh = re.search(rb"bh=([A-Za-z0-9+/=]+)", message)
    policy = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert bh and base64.b64decode(bh.group(1)) == hashlib.sha256(policy.canonicalize_body(body)).digest()


def test_changing_a_signed_header_or_the_body_breaks_the_signature() -> None:
    message = template(signer()).compose(Recipient(1, "bob@example.org", "Bob", "tok-1.xyz"))
    assert dkim.verify(message, dnsfunc=dns)
    tampered = message.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: List-Unsubscribe=Twice"
    )
    assert tampered != message and not dkim.verify(tampered, dnsfunc=dns)
    added = message.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n", 1)
    assert not dkim.verify(added, dnsfunc=dns)  # oversigned: a second copy breaks it too
    assert not dkim.verify(message.replace(b"Unsubscribe", b"Unsubscrib3", 3), dnsfunc=dns)
    wrong_key = dns_record(generate_key(1024)[1]).encode()
    assert not dkim.verify(message, dnsfunc=lambda name, timeout=5: wrong_key)


def test_the_bulk_sender_headers() -> None:
    message = template(None).compose(Recipient(1, "bob@example.org", None, "t"))
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    assert "\r\nPrecedence: bulk\r\n" in head and "\r\nAuto-Submitted: auto-generated\r\n" in head
    assert "\r\nFeedback-ID: 7:test-digest:digest:example.com\r\n" in head
    assert "\r\nList-Help: <https://news.example.com/>\r\n" in head
    assert "\r\nList-Archive: <https://news.example.com/archive>\r\n" in head


def test_the_confirmation_mail_is_signed(tmp_path: Path, env: None) -> None:
    settings = load_settings(write_config(tmp_path))
    message = confirmation_message(
        settings,
        to_email="new@example.org",
        to_name="New",
        confirm_url="https://x/confirm/t",
        signer=signer(),
    )
    assert dkim.verify(message, dnsfunc=dns)


def test_keygen_then_a_demo_issue_verifies_with_the_printed_record(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_cli(config, "init")
    made = run_cli(config, "dkim-keygen").stdout
    key = tmp_path / "dkim.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "news._domainkey.example.com" in made and "[dkim]" in made  # not configured yet: says what to add
    record = re.search(r"^(v=DKIM1; k=rsa; p=\S+)$", made, re.M)
    assert record is not None
    again = run_cli(config, "dkim-keygen", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr and key.read_bytes()
    config.write_text(
        config.read_text()
        + '\n[dkim]\ndomain = "example.com"\nselector = "news"\nprivate_key_file = "dkim.pem"\n'
    )
    run_cli(config, "subscribers", "add", "reader@example.org", "--name", "Reader")
    run_cli(config, "run")
    (eml,) = list((tmp_path / "outbox").rglob("*.eml"))
    txt = record.group(1).encode()
    assert dkim.verify(eml.read_bytes(), dnsfunc=lambda name, timeout=5: txt)
    key.write_text("not a key")  # a bad key file is one sentence, not a traceback
    bad = run_cli(config, "send", check=False)
    assert bad.returncode == 2 and "DKIM private key could not be read" in bad.stderr


def test_the_envelope_sender_names_issue_and_subscriber(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = write_config(
        tmp_path,
        delivery='transport = "smtp"',
        extra=f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\n'
        '[bounces]\nreturn_path = "bounces@example.com"\n',
    )
    run_cli(config, "init")
    store = Store(f"sqlite:///{tmp_path / 'subscribers.db'}")
    store.import_subscribers(
        [NewSubscriber(f"r{i}@example.org", None) for i in range(20)], now=datetime.now(UTC)
    )
    run_cli(config, "run")
    issue_id = store.list_issues()[0].id
    tokens = Tokens(SECRET)
    assert len(smtp_sink.messages) == 20
    for m in smtp_sink.messages:
        token = verp_token(m.mail_from, "bounces@example.com")
        assert token is not None and m.mail_from.startswith("bounces+")
        sub = store.get_subscriber(m.rcpt_tos[0])
        assert sub is not None and tokens.read_bounce(token) == (issue_id, sub.id)
        assert tokens.read_bounce(token.upper()) == (issue_id, sub.id)  # a server that folds case
        i, s, mac = token.split("-")
        with pytest.raises(BadToken):
            tokens.read_bounce(f"{i}-{int(s) + 1}-{mac}")  # another subscriber, same signature
        with pytest.raises(BadToken):
            Tokens("another-secret-key-0123456789ab").read_bounce(token)
    assert verp_token("someone@example.com", "bounces@example.com") is None
    assert verp_token("bounces+x@other.example", "bounces@example.com") is None
    store.close()

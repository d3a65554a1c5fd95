"""One huge bounce mail read by `newsletter bounces`: 5 MB, shaped as the dearest mail for
flufl.bounce's heuristics (blank lines: its 50 patterns are tried on each line) and as a Postfix
DSN that returns a 5 MB copy. The mail is read from its first BOUNCE_READ_LIMIT bytes and
BOUNCE_READ_LINES lines; flufl.bounce on the whole of its first 256 KB is shown for comparison."""

from __future__ import annotations

import email
import time

from flufl.bounce import all_failures

from newsletter.bounces.classify import BOUNCE_READ_LIMIT, BOUNCE_READ_LINES, classify
from newsletter.delivery.tokens import Tokens, verp_address

RETURN_PATH = "bounces@example.com"
MB = 1024 * 1024


def _mails(tokens: Tokens) -> dict[str, bytes]:
    verp = verp_address(RETURN_PATH, tokens.bounce(5, 17)).encode()
    delivered = b"Delivered-To: " + verp + b"\r\n"  # as the bounce mailbox's server writes it
    head = (
        delivered
        + b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail\r\nTo: "
        + verp
        + b"\r\n\r\n"
    )
    dsn = (
        delivered + b"From: MAILER-DAEMON@mx.example\r\nTo: " + verp + b"\r\nSubject: Undelivered Mail\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
        b"Final-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: digest@example.com\r\nTo: x@example.org\r\n\r\n"
    )
    return {
        "5 MB of blank lines, no DSN": head + b"\r\n" * (5 * MB // 2),
        "5 MB Postfix-style DSN, 5 MB returned": dsn + (b"A" * 76 + b"\r\n") * (5 * MB // 78) + b"--b--\r\n",
    }


def measure() -> list[tuple[str, str, str, str]]:
    tokens = Tokens("bench-secret-key-0123456789abcdef")
    rows = []
    for name, data in _mails(tokens).items():
        start = time.perf_counter()
        found = classify(data, tokens=tokens, return_path=RETURN_PATH)
        seconds = time.perf_counter() - start
        assert found.kind == "bounce" and found.events[0].subscriber_id == 17, found
        rows.append((f"classify one bounce mail: {name}", f"{seconds * 1000:,.0f} ms", "", found.note))
    whole = _mails(tokens)["5 MB of blank lines, no DSN"][: MB // 4]
    start = time.perf_counter()
    all_failures(email.message_from_bytes(whole))
    rows.append(
        (
            "flufl.bounce on its first 256 KB whole (not done: for comparison)",
            f"{time.perf_counter() - start:,.1f} s",
            "",
            f"the cap: {BOUNCE_READ_LIMIT // 1024} KB and {BOUNCE_READ_LINES:,} lines",
        )
    )
    return rows


if __name__ == "__main__":
    for row in measure():
        print(" | ".join(row))

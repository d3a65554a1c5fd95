"""Bounce-mailbox contents shaped like what real servers send (written for these tests): a Postfix
DSN, an Exim bounce (not a DSN), a Gmail-style DSN, a soft bounce, a delay warning, an ARF
feedback report, a vacation reply and a mail that is not mail at all."""

from __future__ import annotations


def _crlf(text: str) -> bytes:
    return text.lstrip("\n").replace("\n", "\r\n").encode("utf-8")


def original_headers(*, to: str, unsubscribe_url: str, issue_id: int) -> str:
    return f"""From: Test Digest <digest@example.com>
To: {to}
Subject: 25 Nov 2026: The harbour bridge reopens after repairs
Date: Wed, 25 Nov 2026 06:00:03 +0000
Message-ID: <{issue_id}.17.a1b2c3d41@example.com>
List-Id: Test Digest <test-digest.news.example.com>
List-Unsubscribe: <{unsubscribe_url}>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
Feedback-ID: {issue_id}:test-digest:digest:example.com
Precedence: bulk
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="=_nl_0f0e0d"
"""


def postfix_dsn(*, verp: str, final_recipient: str, original: str) -> bytes:
    b = "7C2F1B20A4.1764054072/mx1.mail.example.net"
    return _crlf(f"""
Return-Path: <>
Delivered-To: {verp}
Received: by mx1.mail.example.net (Postfix)
	id 7C2F1B20A4; Wed, 25 Nov 2026 06:01:12 +0000 (UTC)
Date: Wed, 25 Nov 2026 06:01:12 +0000 (UTC)
From: MAILER-DAEMON@mx1.mail.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="{b}"
Content-Transfer-Encoding: 8bit
Message-Id: <20261125060112.7C2F1B20A4@mx1.mail.example.net>

This is a MIME-encapsulated message.

--{b}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx1.mail.example.net.

Your message could not be delivered to one or more recipients.
The report is below, with the returned message's headers.

                   The mail system

<{final_recipient}>: host mx.forward.example[192.0.2.10] said: 550 5.1.1
    <{final_recipient}>: Recipient address rejected: User unknown in
    virtual mailbox table (in reply to RCPT TO command)

--{b}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.mail.example.net
X-Postfix-Queue-ID: 7C2F1B20A4
X-Postfix-Sender: rfc822; {verp}
Arrival-Date: Wed, 25 Nov 2026 06:01:10 +0000 (UTC)

Final-Recipient: rfc822; {final_recipient}
Original-Recipient: rfc822;{final_recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.forward.example
Diagnostic-Code: smtp; 550 5.1.1 <{final_recipient}>: Recipient address
    rejected: User unknown in virtual mailbox table

--{b}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{original}
--{b}--
""")


def exim_bounce(*, to: str, failed: str, original: str) -> bytes:
    return _crlf(f"""
Return-path: <>
Envelope-to: {to}
Received: from Debian-exim by relay.exim.example with local (Exim 4.96)
	id 1tFq2a-0003Xy-1b
	for {to}; Wed, 25 Nov 2026 06:02:40 +0000
X-Failed-Recipients: {failed}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@relay.exim.example>
To: {to}
Content-Type: text/plain; charset=us-ascii
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tFq2a-0003Xy-1b@relay.exim.example>
Date: Wed, 25 Nov 2026 06:02:40 +0000

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {failed}
    host mx.exim-target.example [192.0.2.20]
    SMTP error from remote mail server after RCPT TO:<{failed}>:
    550 5.1.1 No such mailbox here

------ This is a copy of the message, including all the headers. ------

{original}
(the body of the digest followed)
""")


def gmail_dsn(*, verp: str, recipient: str, status: str, diagnostic: str, original: str) -> bytes:
    b = "000000000000a7b3c40620f1e2d3"
    return _crlf(f"""
Delivered-To: {verp}
Return-Path: <>
Received: by mail-sor-f69.google.example with SMTP id a1sor2
        for <{verp}>; Wed, 25 Nov 2026 06:03:21 -0800 (PST)
From: Mail Delivery Subsystem <mailer-daemon@googlemail.example>
To: {verp}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
Date: Wed, 25 Nov 2026 06:03:21 -0800 (PST)
Message-ID: <6543e2f1.a1b2.4c5d.9f00.SMTPIN_ADDED_BROKEN@mx.google.example>
MIME-Version: 1.0
Content-Type: multipart/report; boundary="{b}"; report-type=delivery-status

--{b}
Content-Type: multipart/related; boundary="{b}2"

--{b}2
Content-Type: text/html; charset="UTF-8"

<html><body><h2>Address not found</h2><p>Your message wasn't delivered to
<a href="mailto:{recipient}">{recipient}</a>.</p>
<p>The response was: {diagnostic}</p></body></html>

--{b}2--

--{b}
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.example
Received-From-MTA: dns; digest.example.com
Arrival-Date: Wed, 25 Nov 2026 06:03:20 -0800 (PST)
X-Original-Message-ID: <1.2.abc@example.com>

Final-Recipient: rfc822; {recipient}
Action: failed
Status: {status}
Remote-MTA: dns; mx.recipient-provider.example. (192.0.2.30, the server for the domain)
Diagnostic-Code: smtp; {diagnostic}
Last-Attempt-Date: Wed, 25 Nov 2026 06:03:21 -0800 (PST)

--{b}
Content-Type: message/rfc822

{original}
(body)

--{b}--
""")


def delay_warning(*, verp: str, recipient: str) -> bytes:
    b = "9A1B2C3D4E.1764057672/mx1.mail.example.net"
    return _crlf(f"""
Return-Path: <>
Date: Wed, 25 Nov 2026 07:01:12 +0000 (UTC)
From: MAILER-DAEMON@mx1.mail.example.net (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="{b}"

--{b}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx1.mail.example.net.
Your message could not be delivered for 1.0 hours. It will be retried until it is 5 days old.

--{b}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.mail.example.net

Final-Recipient: rfc822; {recipient}
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.slow.example[192.0.2.40]:25: Connection timed out
Will-Retry-Until: Mon, 30 Nov 2026 06:00:00 +0000 (UTC)

--{b}--
""")


def arf_report(
    *, fbl_to: str, original: str, original_mail_from: str = "", original_rcpt_to: str = ""
) -> bytes:
    b = "----=_Part_4182_arf.1764057000"
    mail_from = f"Original-Mail-From: <{original_mail_from}>\n" if original_mail_from else ""
    mail_from += f"Original-Rcpt-To: {original_rcpt_to}\n" if original_rcpt_to else ""
    return _crlf(f"""
Return-Path: <fbl-bounces@feedback.mailbox.example>
From: Feedback Loop <staff@feedback.mailbox.example>
To: {fbl_to}
Subject: complaint about message from 198.51.100.7
Date: Wed, 25 Nov 2026 09:12:00 +0000
Message-ID: <arf.20261125091200.81@feedback.mailbox.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
	boundary="{b}"

--{b}
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
198.51.100.7 on Wed, 25 Nov 2026 06:00:05 +0000. A recipient marked it as spam.

--{b}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/2.1
Version: 1
{mail_from}Arrival-Date: Wed, 25 Nov 2026 06:00:05 +0000
Source-IP: 198.51.100.7
Reported-Domain: example.com

--{b}
Content-Type: message/rfc822
Content-Disposition: inline

{original}
(the digest, redacted by the mailbox provider)

--{b}--
""")


def vacation_reply(*, sender: str, verp: str) -> bytes:
    return _crlf(f"""
Return-Path: <>
From: {sender}
To: {verp}
Subject: Out of Office: 25 Nov 2026: The harbour bridge reopens after repairs
Date: Wed, 25 Nov 2026 06:00:09 +0000
Message-ID: <oof.0001@mail.example.org>
Auto-Submitted: auto-replied
X-Autoreply: yes
Content-Type: text/plain; charset=utf-8

I am away until 2 December and read no mail until then.
For anything urgent, please ring the front desk.
""")


GARBAGE = b"\x00\x01\x02 this is not a mail message \xff\xfe\r\n\x00binary junk from a broken relay\r\n"


def delivered_copy(sent: bytes, *, verp: str, reader: str) -> bytes:
    """A reader's copy as their mailbox keeps it: the receiving server wrote the envelope sender,
    our VERP address, into its Return-Path, and the envelope recipient above the message."""
    return f"Return-Path: <{verp}>\r\nDelivered-To: {reader}\r\n".encode() + sent


def wrapped_in_report(kind: str, copy: bytes, *, failed: str, headers: str = "") -> bytes:
    """What anybody holding a delivered copy (a reader forwarded it as an attachment) can send to
    the bounce address: the copy wrapped in an ARF report ("arf") or a 5.1.1 DSN ("dsn") from an
    unrelated sender, with `headers` of its own choosing on top (a To: or Delivered-To: it writes)."""
    b = "BOUNDARY42"
    if kind == "arf":
        top = "From: abuse@attacker.example\nSubject: FW: complaint\n"
        ctype, part = (
            "feedback-report",
            "message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: x/1\nVersion: 1\n",
        )
    else:
        top = "From: MAILER-DAEMON@attacker.example\nSubject: Undelivered Mail Returned to Sender\n"
        ctype = "delivery-status"
        part = (
            "message/delivery-status\n\nReporting-MTA: dns; attacker.example\n\n"
            f"Final-Recipient: rfc822; {failed}\nAction: failed\nStatus: 5.1.1\n"
            "Diagnostic-Code: smtp; 550 5.1.1 no such user\n"
        )
    head = _crlf(f"""
{headers}{top}To: bounces@example.com
Date: Wed, 25 Nov 2026 10:00:00 +0000
Message-ID: <{kind}.forwarded@attacker.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type={ctype}; boundary="{b}"

--{b}
Content-Type: text/plain

This is a report.
--{b}
Content-Type: {part}
--{b}
Content-Type: message/rfc822

""")
    return head + copy + f"\r\n--{b}--\r\n".encode()

"""Reading the bounce mailbox: a Maildir, an mbox file or an IMAP folder (read-only: nothing is
flagged or deleted)."""

from __future__ import annotations

import imaplib
import mailbox
import os
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..config import Settings
from ..errors import ConfigError, NewsletterError

__all__ = ["BOUNCE_PASSWORD_ENV", "MailItem", "read_mailbox"]

BOUNCE_PASSWORD_ENV = "NEWSLETTER_BOUNCE_PASSWORD"


@dataclass(frozen=True)
class MailItem:
    source: str  # where it is in the mailbox, for the record and the report
    data: bytes


def read_mailbox(spec: str, settings: Settings, *, skip: Callable[[str], bool]) -> Iterator[MailItem]:
    """Every mail in `[bounces] mailbox`: "maildir:PATH", "mbox:PATH" or "imaps://user@host:993/INBOX".
    `skip(source)` says a mail was read before (IMAP then does not fetch it again)."""
    kind, _, rest = spec.partition(":")
    if kind in ("maildir", "mbox"):
        path = settings.path(rest)
        if not path.exists():
            raise NewsletterError(f"the bounce mailbox {path} does not exist ([bounces] mailbox = {spec!r})")
        box: mailbox.Mailbox[mailbox.Message] = (
            mailbox.Maildir(path, factory=None, create=False)
            if kind == "maildir"
            else mailbox.mbox(path, create=False)
        )
        try:
            for key in box.iterkeys():
                source = f"{kind}:{key}"
                if skip(source):
                    continue
                with box.get_file(key) as f:
                    yield MailItem(source, f.read())
        finally:
            box.close()
    elif spec.startswith("imaps://"):
        yield from _imap(spec, settings, skip)
    else:
        raise ConfigError(
            f"configuration key 'bounces.mailbox' must start with maildir:, mbox: or imaps:// (got {spec!r})"
        )


def _imap(spec: str, settings: Settings, skip: Callable[[str], bool]) -> Iterator[MailItem]:
    url = urlsplit(spec)
    user, host = unquote(url.username or ""), url.hostname or ""
    folder = unquote(url.path.lstrip("/")) or "INBOX"
    password = os.environ.get(BOUNCE_PASSWORD_ENV, "")
    if not user or not host:
        raise ConfigError(
            f"configuration key 'bounces.mailbox' needs imaps://USER@HOST[:PORT]/FOLDER (got {spec!r})"
        )
    context = ssl.create_default_context()  # the system's CAs; SSL_CERT_FILE names another bundle
    try:
        conn = imaplib.IMAP4_SSL(
            host, url.port or 993, ssl_context=context, timeout=settings.smtp.timeout_seconds
        )
    except (OSError, imaplib.IMAP4.error) as exc:
        raise NewsletterError(f"cannot reach the bounce mailbox at {host}:{url.port or 993}: {exc}") from None
    try:
        try:
            conn.login(user, password)
        except imaplib.IMAP4.error as exc:
            raise NewsletterError(
                f"the bounce mailbox refused the login of {user} "
                f"(password from ${BOUNCE_PASSWORD_ENV}): {exc}"
            ) from None
        status, data = conn.select(_quote(folder), readonly=True)  # read-only: nothing is flagged or deleted
        if status != "OK":
            raise NewsletterError(f"the bounce mailbox has no folder {folder!r}")
        validity = (conn.response("UIDVALIDITY")[1] or [b"0"])[0]
        validity_text = validity.decode() if isinstance(validity, bytes) else str(validity)
        status, data = conn.uid("SEARCH", "ALL")
        uids = data[0].split() if status == "OK" and data and isinstance(data[0], bytes) else []
        for uid in uids:
            source = f"imap:{host}/{folder};uidvalidity={validity_text};uid={uid.decode()}"
            if skip(source):
                continue
            status, fetched = conn.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
            body = next((part[1] for part in fetched if isinstance(part, tuple)), None)
            if status == "OK" and isinstance(body, bytes):
                yield MailItem(source, body)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise NewsletterError(f"the bounce mailbox at {host} failed: {exc}") from None
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _quote(folder: str) -> str:
    return folder if re.fullmatch(r"[\w./-]+", folder) else '"' + folder.replace('"', '\\"') + '"'

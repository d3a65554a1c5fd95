"""A private Postfix (Debian's package `postfix`) for the tests: its own configuration, queue and
data folders in a temporary folder, one SMTP listener on 127.0.0.1 at a free port, aliases and
`error:`/`retry:` transports, and the bounce address delivered to a Maildir. The system's own
instance (/etc/postfix/main.cf, port 25) is never read, started or stopped."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .helpers import free_port, wait_for

POSTFIX = "/usr/sbin/postfix"
# one line a service (master(5)); none chrooted, since the queue folder holds no copy of /etc
SERVICES = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class PrivatePostfix:
    """`aliases` rewrite a reader's address (virtual_alias_maps: one address to one or more);
    `transports` route a domain (transport_maps: "error:5.1.1 text" bounces at once, "retry:4.3.0
    text" defers, and with a queue lifetime of 0 the first deferral is given up and returned);
    mail to `bounce_address` and its `+TOKEN` addresses lands in the Maildir `bounce_maildir`."""

    def __init__(
        self, *, domain: str, aliases: dict[str, list[str]], transports: dict[str, str], bounce_address: str
    ) -> None:
        if not os.path.exists(POSTFIX):
            raise RuntimeError(f"{POSTFIX} is missing: install Debian's package `postfix`")
        if os.geteuid() != 0:
            raise RuntimeError(
                "a private Postfix instance is started as root (postfix(1) starts master as root)"
            )
        owner = pwd.getpwnam("postfix")
        self.root = Path(tempfile.mkdtemp(prefix="newsletter-postfix-"))
        self.root.chmod(0o755)  # the delivery agents, as user postfix, reach the Maildir below it
        self.port = free_port()
        etc, data, mail = self.root / "etc", self.root / "data", self.root / "mail"
        for folder in (etc, self.root / "spool", data, mail):
            folder.mkdir()
        for folder in (data, mail):
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        self.log = self.root / "maillog"
        local, _, bounce_domain = bounce_address.partition("@")
        (etc / "aliases").write_text("".join(f"{a} {', '.join(to)}\n" for a, to in aliases.items()))
        (etc / "transport").write_text("".join(f"{d} {t}\n" for d, t in transports.items()))
        (etc / "mailboxes").write_text(f"{bounce_address} {local}/\n")
        (etc / "master.cf").write_text(SERVICES.format(listen=f"127.0.0.1:{self.port}"))
        (etc / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {self.root}/spool
data_directory = {data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {self.root}
maillog_file = {self.log}
myhostname = mx.postfix-test.example
mydomain = postfix-test.example
myorigin = $myhostname
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
virtual_alias_domains = {domain}
virtual_alias_maps = texthash:{etc}/aliases
transport_maps = texthash:{etc}/transport
recipient_delimiter = +
virtual_mailbox_domains = {bounce_domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{etc}/mailboxes
virtual_uid_maps = static:{owner.pw_uid}
virtual_gid_maps = static:{owner.pw_gid}
virtual_minimum_uid = 1
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 1s
"""
        )
        self.config_directory = etc
        self.bounce_maildir = mail / local
        self._postfix("start")
        if not wait_for(self._listening, timeout=20):
            self.close()
            raise RuntimeError(
                f"the private Postfix does not listen on 127.0.0.1:{self.port}\n{self.log_text()}"
            )

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            [POSTFIX, "-c", str(self.config_directory), command], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {command} failed ({done.returncode})\n{self.log_text()}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def returned(self) -> list[Path]:
        """The mails delivered to the bounce Maildir so far."""
        return sorted((self.bounce_maildir / "new").glob("*")) if self.bounce_maildir.exists() else []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"

    def close(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

"""A small IMAP4rev1 server over TLS for the tests: one user, one folder, the commands a read-only
client uses (CAPABILITY, LOGIN, EXAMINE/SELECT, UID SEARCH, UID FETCH, LOGOUT). It records
every command, so a test can see that nothing was flagged, copied or expunged."""

from __future__ import annotations

import re
import socketserver
import ssl
import threading
from pathlib import Path


class ImapServer:
    def __init__(self, cert: Path, key: Path, *, user: str, password: str, messages: list[bytes]) -> None:
        self.user, self.password = user, password
        self.messages = list(messages)  # uid = index + 1
        self.commands: list[str] = []
        self.logins = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"* OK [CAPABILITY IMAP4rev1] test server ready\r\n")
                logged_in = False
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    tag, _, rest = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
                    command, _, args = rest.partition(" ")
                    command = command.upper()
                    server.commands.append(f"{command} {args}".strip())
                    if command == "CAPABILITY":
                        self.reply(tag, "* CAPABILITY IMAP4rev1 AUTH=PLAIN")
                    elif command == "NOOP":
                        self.reply(tag)
                    elif command == "LOGIN":
                        user, password = (a.strip('"') for a in _args(args))
                        if (user, password) == (server.user, server.password):
                            logged_in = True
                            server.logins += 1
                            self.reply(tag)
                        else:
                            self.wfile.write(
                                f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n".encode()
                            )
                    elif command == "LOGOUT":  # in any state (RFC 3501 section 6.1.3)
                        self.reply(tag, "* BYE logging out")
                        return
                    elif not logged_in:
                        self.wfile.write(f"{tag} BAD log in first\r\n".encode())
                    elif command in ("SELECT", "EXAMINE"):
                        if args.strip('"').upper() != "INBOX":
                            self.wfile.write(f"{tag} NO no such folder\r\n".encode())
                            continue
                        self.reply(
                            tag,
                            f"* {len(server.messages)} EXISTS",
                            "* 0 RECENT",
                            "* OK [UIDVALIDITY 3857529045] UIDs valid",
                            f"* OK [UIDNEXT {len(server.messages) + 1}] next",
                            code="[READ-ONLY]" if command == "EXAMINE" else "[READ-WRITE]",
                        )
                    elif command == "UID" and args.upper().startswith("SEARCH"):
                        uids = " ".join(str(i + 1) for i in range(len(server.messages)))
                        self.reply(tag, f"* SEARCH {uids}".rstrip())
                    elif command == "UID" and args.upper().startswith("FETCH"):
                        uid = int(args.split()[1])
                        data = server.messages[uid - 1]
                        self.wfile.write(f"* {uid} FETCH (UID {uid} BODY[] {{{len(data)}}}\r\n".encode())
                        self.wfile.write(data + b")\r\n")
                        self.reply(tag)
                    else:
                        self.wfile.write(f"{tag} BAD not supported here\r\n".encode())

            def reply(self, tag: str, *untagged: str, code: str = "") -> None:
                for u in untagged:
                    self.wfile.write(u.encode() + b"\r\n")
                self.wfile.write(f"{tag} OK {code + ' ' if code else ''}done\r\n".encode())

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self) -> tuple[ssl.SSLSocket, object]:
                sock, addr = self.socket.accept()
                sock.settimeout(10)
                return context.wrap_socket(sock, server_side=True), addr

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _args(text: str) -> list[str]:
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', text)

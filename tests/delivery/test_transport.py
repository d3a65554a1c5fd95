"""The hand-written SMTP client against aiosmtpd: STARTTLS, implicit TLS, login, multi-line
replies, dot-stuffing, and a server that hangs up."""

import email
import ssl
import threading
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from newsletter.db.models import DeliveryStatus
from newsletter.delivery.transport import Envelope, SmtpTransport
from newsletter.errors import TransportError

from ..support.helpers import free_port

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: dots\r\n\r\n"
    b".leading dot\r\nmiddle\r\n.\r\n..two\r\nend without newline"
)


class Keeper:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        if address.startswith("gone"):
            return (
                "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
                "550 5.1.1 See the help page"
            )
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"news"
        and auth_data.password == b"s3cret"
    )
    return AuthResult(success=ok, handled=False)  # False: aiosmtpd sends the 235 or 535 itself


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[int, Keeper, ssl.SSLContext]]:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    keeper = Keeper()
    port = free_port()
    controller = Controller(
        keeper,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    yield port, keeper, client_context
    controller.stop()


def test_starttls_login_multiline_replies_and_dot_stuffing(
    tls_server: tuple[int, Keeper, ssl.SSLContext],
) -> None:
    port, keeper, context = tls_server
    t = SmtpTransport(
        "127.0.0.1",
        port,
        security="starttls",
        username="news",
        password="s3cret",
        timeout=5,
        tls_context=context,
    )
    try:
        assert (
            t.send(Envelope("b@example.com", "reader@example.com", "k"), MESSAGE).status
            == DeliveryStatus.SENT
        )
        refused = t.send(Envelope("b@example.com", "gone@example.com", "k"), MESSAGE)
        assert refused.status == DeliveryStatus.BOUNCED
        assert "does not exist" in refused.reply and "See the help page" in refused.reply  # both lines kept
        assert (
            t.send(Envelope("b@example.com", "again@example.com", "k"), MESSAGE).status == DeliveryStatus.SENT
        )
    finally:
        t.close()
    assert [m[1] for m in keeper.messages] == [["reader@example.com"], ["again@example.com"]]
    body = email.message_from_bytes(keeper.messages[0][2], policy=policy.default).get_content()
    assert body.replace("\r\n", "\n") == ".leading dot\nmiddle\n.\n..two\nend without newline\n"


def test_wrong_password_and_untrusted_certificate_are_clear_errors(
    tls_server: tuple[int, Keeper, ssl.SSLContext],
) -> None:
    port, _, context = tls_server
    wrong = SmtpTransport(
        "127.0.0.1",
        port,
        security="starttls",
        username="news",
        password="nope",
        timeout=5,
        tls_context=context,
    )
    with pytest.raises(TransportError, match="refused the login"):
        wrong.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    untrusted = SmtpTransport("127.0.0.1", port, security="starttls", timeout=5)  # system CAs only
    with pytest.raises(TransportError, match="cannot connect"):
        untrusted.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    plain = SmtpTransport("127.0.0.1", port, security="none", timeout=5)  # the server requires STARTTLS
    result = plain.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
    assert result.status != DeliveryStatus.SENT
    plain.close()


def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    keeper = Keeper()
    port = free_port()
    controller = Controller(keeper, hostname="127.0.0.1", port=port, ssl_context=server_context)
    controller.start()
    try:
        t = SmtpTransport(
            "127.0.0.1",
            port,
            security="tls",
            timeout=5,
            tls_context=ssl.create_default_context(cafile=str(cert)),
        )
        assert t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE).status == DeliveryStatus.SENT
        t.close()
    finally:
        controller.stop()
    assert len(keeper.messages) == 1


def test_a_server_that_hangs_up_before_the_message_is_a_deferral_after_it_unknown() -> None:
    keeper = Keeper()
    port = free_port()
    state = {"n": 0, "rcpt": 0}

    class Dropper(Keeper):
        async def handle_RCPT(  # noqa: N802
            self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
        ) -> str:
            state["rcpt"] += 1
            if state["rcpt"] == 1:  # before the message: it cannot have been delivered
                server.transport.close()
                return "250 never heard"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            state["n"] += 1
            if state["n"] == 1:  # after the final dot: it may have been
                server.transport.close()
                return "250 never heard"
            return await keeper.handle_DATA(server, session, envelope)

    controller = Controller(Dropper(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        t = SmtpTransport("127.0.0.1", port, security="none", timeout=5)
        first = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
        assert first.status == DeliveryStatus.DEFERRED and "connection lost" in first.reply
        assert not t.connected
        second = t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE)
        assert second.status == DeliveryStatus.UNKNOWN and "after the message's final dot" in second.reply
        assert not t.connected
        assert t.send(Envelope("b@example.com", "r@example.com", "k"), MESSAGE).status == DeliveryStatus.SENT
        t.close()
    finally:
        controller.stop()
    assert len(keeper.messages) == 1

"""Signed, opaque tokens for confirm, unsubscribe and preference links.

A token carries a subscriber id, never an address, and an HMAC over it with the secret key
and a purpose; changing one character, or using one purpose's token for another, fails."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ..errors import BadToken

__all__ = ["BadToken", "Tokens", "CONFIRM_MAX_AGE_SECONDS", "verp_address", "verp_token"]

CONFIRM_MAX_AGE_SECONDS = 7 * 24 * 3600


class _ReaderLink:
    """A subscriber id and an HMAC over it with a key of one purpose: no expiry. One signature per
    subscriber per issue sent: the plain HMAC, keyed once, costs a microsecond where a serializer
    that derives its key on every call costs fifteen."""

    def __init__(self, secret_key: str, purpose: str) -> None:
        self._key = hashlib.sha256(f"newsletter.{purpose}\0".encode() + secret_key.encode()).digest()
        self._refusal = f"this {purpose} link is not valid"

    def sign(self, subscriber_id: int) -> str:
        body = _b64(str(subscriber_id).encode("ascii"))
        return f"{body}.{self._mac(body)}"

    def read(self, token: str) -> int:
        body, _, mac = token.partition(".")
        if (
            not body
            or not token.isascii()
            or not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(body).encode("ascii"))
        ):
            raise BadToken(self._refusal)
        try:
            value = int(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise BadToken(self._refusal) from None
        return _subscriber_id(value)

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()[:18])


class Tokens:
    def __init__(self, secret_key: str) -> None:
        self._unsubscribe = _ReaderLink(secret_key, "unsubscribe")
        self._preferences = _ReaderLink(secret_key, "preferences")
        self._confirm = URLSafeTimedSerializer(secret_key, salt="newsletter.confirm")
        self._bounce_key = hashlib.sha256(b"newsletter.bounce\0" + secret_key.encode()).digest()

    def unsubscribe(self, subscriber_id: int) -> str:
        return self._unsubscribe.sign(subscriber_id)

    def read_unsubscribe(self, token: str) -> int:
        return self._unsubscribe.read(token)

    def preferences(self, subscriber_id: int) -> str:
        """The token of a reader's preference page (`/preferences/TOKEN`): like the unsubscribe
        token, with a key of its own, so neither is ever the other."""
        return self._preferences.sign(subscriber_id)

    def read_preferences(self, token: str) -> int:
        return self._preferences.read(token)

    def confirm(self, subscriber_id: int, choice: Sequence[object] = ()) -> str:
        """`choice`: what the signup form chose (sections, frequency), carried to the confirmation
        in the signed token, so the choices come with the consent and nobody else's signup of the
        address can change them."""
        return str(self._confirm.dumps([subscriber_id, *choice] if choice else subscriber_id))

    def read_confirm(self, token: str, *, max_age: int = CONFIRM_MAX_AGE_SECONDS) -> int:
        return self.read_confirm_choice(token, max_age=max_age)[0]

    def read_confirm_choice(
        self, token: str, *, max_age: int = CONFIRM_MAX_AGE_SECONDS
    ) -> tuple[int, list[object]]:
        """(subscriber id, the signup's choice: [] when it made none)."""
        subscriber_id, choice, _issued = self.read_confirm_issued(token, max_age=max_age)
        return subscriber_id, choice

    def read_confirm_issued(
        self, token: str, *, max_age: int = CONFIRM_MAX_AGE_SECONDS
    ) -> tuple[int, list[object], datetime]:
        """(subscriber id, the signup's choice, when the link was made): a link made before its
        subscriber's row is another signup's (a pruned one whose id a new row took)."""
        try:
            value, issued = self._confirm.loads(token, max_age=max_age, return_timestamp=True)
        except SignatureExpired:
            raise BadToken("this confirmation link has expired") from None
        except BadSignature:
            raise BadToken("this confirmation link is not valid") from None
        if isinstance(value, list) and value:
            return _subscriber_id(value[0]), value[1:], issued
        return _subscriber_id(value), [], issued

    def bounce(self, issue_id: int, subscriber_id: int) -> str:
        """The VERP token of one delivery: `ISSUE-SUBSCRIBER-MAC`, lower case (some servers fold the
        local part's case), short enough for any address."""
        return f"{issue_id}-{subscriber_id}-{self._bounce_mac(issue_id, subscriber_id)}"

    def read_bounce(self, token: str) -> tuple[int, int]:
        """(issue id, subscriber id) of a VERP token; BadToken when forged or garbled."""
        parts = token.lower().split("-")
        # ids of up to 18 digits: a longer one is no id of ours, and Python refuses 4,300 and more
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts[:2]):
            raise BadToken("not a bounce token")
        issue_id, subscriber_id = int(parts[0]), int(parts[1])
        if not hmac.compare_digest(parts[2], self._bounce_mac(issue_id, subscriber_id)):
            raise BadToken("the bounce token's signature does not match")
        return issue_id, _subscriber_id(subscriber_id)

    def _bounce_mac(self, issue_id: int, subscriber_id: int) -> str:
        digest = hmac.new(self._bounce_key, f"{issue_id}.{subscriber_id}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode("ascii").lower()


def verp_address(return_path: str, token: str) -> str:
    """bounces@example.com + TOKEN -> bounces+TOKEN@example.com"""
    local, _, domain = return_path.rpartition("@")
    return f"{local}+{token}@{domain}"


def verp_token(address: str, return_path: str) -> str | None:
    """The token of a VERP address made from `return_path`, or None (case-insensitive)."""
    local, _, domain = return_path.lower().rpartition("@")
    a_local, _, a_domain = address.strip().strip("<>").lower().rpartition("@")
    prefix = local + "+"
    if a_domain != domain or not a_local.startswith(prefix):
        return None
    return a_local[len(prefix) :] or None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _subscriber_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadToken("this link is not valid")
    return value

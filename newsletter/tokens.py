"""Signed, opaque tokens for confirm and unsubscribe links.

A token carries a subscriber id, never an address, and an HMAC over it with the secret key
and a purpose; changing one character, or using one purpose's token for another, fails."""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

__all__ = ["BadToken", "Tokens", "CONFIRM_MAX_AGE_SECONDS"]

CONFIRM_MAX_AGE_SECONDS = 7 * 24 * 3600


class BadToken(Exception):
    """The token is tampered with, of another purpose, or expired."""


class Tokens:
    def __init__(self, secret_key: str) -> None:
        self._unsubscribe = URLSafeSerializer(secret_key, salt="newsletter.unsubscribe")
        self._confirm = URLSafeTimedSerializer(secret_key, salt="newsletter.confirm")

    def unsubscribe(self, subscriber_id: int) -> str:
        return str(self._unsubscribe.dumps(subscriber_id))

    def read_unsubscribe(self, token: str) -> int:
        try:
            value = self._unsubscribe.loads(token)
        except BadSignature:
            raise BadToken("this unsubscribe link is not valid") from None
        return _subscriber_id(value)

    def confirm(self, subscriber_id: int) -> str:
        return str(self._confirm.dumps(subscriber_id))

    def read_confirm(self, token: str, *, max_age: int = CONFIRM_MAX_AGE_SECONDS) -> int:
        try:
            value = self._confirm.loads(token, max_age=max_age)
        except SignatureExpired:
            raise BadToken("this confirmation link has expired") from None
        except BadSignature:
            raise BadToken("this confirmation link is not valid") from None
        return _subscriber_id(value)


def _subscriber_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadToken("this link is not valid")
    return value

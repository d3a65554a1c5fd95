"""Operators of the console: the rules the `admin add-user` command and the console's login share
(a name and password that may be saved, Argon2id hashing, the check at login)."""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update

from .db import widths
from .db.engine import Database
from .db.models import Operator
from .errors import UsageError

__all__ = [
    "MIN_PASSWORD",
    "InvalidOperator",
    "OperatorRepository",
    "hash_password",
    "password_matches",
    "rehash_if_needed",
    "session_id",
    "set_operator",
]

MIN_PASSWORD = 10
_hasher = PasswordHasher()  # Argon2id, the library's current recommended parameters


class InvalidOperator(UsageError):
    """An operator's name or password that the rules refuse (exit 2: the command was given it)."""


@cache
def _dummy_hash() -> str:
    """Made at the first login, not at import: an Argon2 hash costs a tenth of a second, and
    every command starts a process that imports this module."""
    return _hasher.hash("not a password anyone has")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """The check at login; an unknown name (None) costs the same work as a known one, so the
    answer's time never says which names exist."""
    try:
        _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return password_hash is not None


def rehash_if_needed(password_hash: str, password: str) -> str | None:
    """A new hash when the library's parameters grew since this one was made; else None."""
    return _hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None


def set_operator(store: OperatorRepository, name: str, password: str, *, now: datetime) -> bool:
    """Add an operator, or give one a new password (which ends their sessions); True if added."""
    name = name.strip()
    if not name or len(name) > widths.OPERATOR_NAME or any(not c.isprintable() for c in name):
        raise InvalidOperator(f"an operator's name is 1 to {widths.OPERATOR_NAME} printable characters")
    if len(password) < MIN_PASSWORD:
        raise InvalidOperator(f"the password needs at least {MIN_PASSWORD} characters")
    return store.save_operator(name, hash_password(password), now=now)


def session_id(operator: Operator) -> str:
    """What a console session keeps: "id:version". A version the operator row no longer has (a
    logout, a new password) ends that session, wherever its cookie was copied."""
    return f"{operator.id}:{operator.session_version}"


class OperatorRepository(Database):
    """The console's operators: their password hashes and session versions."""

    def save_operator(self, name: str, password_hash: str, *, now: datetime) -> bool:
        """Add an operator, or set a new password for one; True if added."""
        with self.write() as s:
            op = s.scalar(select(Operator).where(Operator.name == name))
            if op is not None:  # a new password ends every session of the old one
                op.password_hash, op.session_version = password_hash, op.session_version + 1
                return False
            s.add(Operator(name=name, password_hash=password_hash, created_at=now))
            return True

    def operator(self, *, name: str | None = None, operator_id: int | None = None) -> Operator | None:
        with self.read() as s:
            if operator_id is not None:
                return s.get(Operator, operator_id)
            return s.scalar(select(Operator).where(Operator.name == name))

    def operator_in_session(self, session: str) -> Operator | None:
        """The operator whose session this is (`session_id`), while that session is live."""
        if not re.fullmatch(r"[0-9]{1,9}:[0-9]{1,18}", session):
            return None
        op = self.operator(operator_id=int(session.partition(":")[0]))
        if op is None or session_id(op) != session:
            return None
        return op

    def end_operator_sessions(self, operator_id: int) -> None:
        """Logout: every session of this operator ends, wherever its cookie is."""
        with self.write() as s:
            s.execute(
                update(Operator)
                .where(Operator.id == operator_id)
                .values(session_version=Operator.session_version + 1)
            )

    def operator_logged_in(self, operator_id: int, *, password_hash: str | None, now: datetime) -> None:
        with self.write() as s:
            values: dict[str, Any] = {"last_login_at": now}
            if password_hash:  # a rehash with today's parameters
                values["password_hash"] = password_hash
            s.execute(update(Operator).where(Operator.id == operator_id).values(**values))

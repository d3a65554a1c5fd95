"""A subscriber as an import or a signup gives them, before they are stored."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ERASED_DOMAIN", "NewSubscriber"]

ERASED_DOMAIN = "@erased.invalid"  # RFC 2606: never a real address


class NewSubscriber(NamedTuple):
    email: str
    name: str | None

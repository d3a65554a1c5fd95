"""A subscriber as an import or a signup gives them, before they are stored; a reader's choices."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from ..db.models import Frequency

__all__ = ["ERASED_DOMAIN", "NewSubscriber", "OneMail", "Preferences", "DEFAULT_PREFERENCES"]

ERASED_DOMAIN = "@erased.invalid"  # RFC 2606: never a real address


class Preferences(NamedTuple):
    """What a reader gets: the sections they chose, in the config's order (() is every section,
    also the ones added later), and how often."""

    sections: tuple[str, ...] = ()
    frequency: Frequency = Frequency.DAILY


DEFAULT_PREFERENCES = Preferences()


class NewSubscriber(NamedTuple):
    email: str
    name: str | None
    preferences: Preferences = DEFAULT_PREFERENCES


class OneMail(Enum):
    """The mails a subscriber gets once at most (SPEC 10)."""

    WELCOME = "welcome"  # on confirming
    REMINDER = "reminder"  # a pending signup's fresh confirm link

"""What a bounce mail was found to say, and what recording it changed."""

from __future__ import annotations

from dataclasses import dataclass

from ..db.models import BounceKind, MailKind, SignedBy

__all__ = ["FoundEvent", "MailOutcome"]


@dataclass(frozen=True)
class FoundEvent:
    """A bounce or complaint found in a mail: for a subscriber known by token, or by address."""

    kind: BounceKind
    address: str
    subscriber_id: int | None
    issue_id: int | None
    status: str
    detail: str
    signed_by: SignedBy = SignedBy.NOTHING


@dataclass(frozen=True)
class MailOutcome:
    lines: list[str]  # what changed, one line per event
    kind: MailKind  # as recorded: the classified kind, or REVIEW when the policy believed none of it

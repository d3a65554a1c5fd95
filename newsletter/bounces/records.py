"""What a bounce mail was found to say, and what recording it changed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FoundEvent", "MailOutcome"]


@dataclass(frozen=True)
class FoundEvent:
    """A bounce or complaint found in a mail: for a subscriber known by token, or by address."""

    kind: str  # hard, soft, complaint
    address: str
    subscriber_id: int | None
    issue_id: int | None
    status: str
    detail: str
    # what named the subscriber: "verp" (our signed envelope address), "link" (only the signed
    # unsubscribe link of a returned copy), "" (nothing signed)
    signed_by: str = ""


@dataclass(frozen=True)
class MailOutcome:
    lines: list[str]  # what changed, one line per event
    kind: str  # as recorded: the classified kind, or "review" when the policy believed none of it

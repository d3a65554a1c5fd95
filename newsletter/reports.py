"""What an issue's numbers mean, for `status` and the console alike: its engagement rates and
the complaint threshold that mailbox providers act on."""

from __future__ import annotations

from typing import Any

from .db.models import DeliveryStatus
from .issues.records import IssueCounts

__all__ = ["COMPLAINT_WARNING", "DELIVERY_COLUMNS", "complaint_warning", "engagement"]

# An issue's deliveries by state, in the order the console shows them: what went out first.
DELIVERY_COLUMNS = (
    DeliveryStatus.SENT,
    DeliveryStatus.PENDING,
    DeliveryStatus.SENDING,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.FAILED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.UNKNOWN,
    DeliveryStatus.SKIPPED,
)

# Above a tenth of a percent mailbox providers start to send a newsletter to spam.
COMPLAINT_WARNING = 0.001


def engagement(r: IssueCounts) -> dict[str, Any]:
    """Counts and rates: bounces of the messages that got a reply, the rest of those accepted."""
    return {
        "accepted": r.accepted,
        "hard_bounced": r.hard_bounced,
        "soft_bounced": r.soft_bounced,
        "complained": r.complained,
        "unsubscribed": r.unsubscribed,
        "rates": {
            "hard_bounced": round(r.rate(r.hard_bounced, of_reached=True), 6),
            "soft_bounced": round(r.rate(r.soft_bounced), 6),
            "complained": round(r.rate(r.complained), 6),
            "unsubscribed": round(r.rate(r.unsubscribed), 6),
        },
        "complaint_warning": r.rate(r.complained) > COMPLAINT_WARNING,
    }


def complaint_warning(r: IssueCounts) -> str | None:
    """The sentence to show when an issue's complaints passed the threshold; else None."""
    rate = r.rate(r.complained)
    if rate <= COMPLAINT_WARNING:
        return None
    return (
        f"issue {r.issue_id} drew complaints from {rate:.2%} of its readers; above "
        f"{COMPLAINT_WARNING:.1%} mailbox providers start to send a newsletter to spam "
        f"(Gmail and Yahoo's limit is 0.3%)"
    )

"""The newsletter's storage: every repository over one Database (one engine, one pool, one set of
migrations). Each repository is a module beside the rules that use it and holds that table's
queries; this class only puts them together, so a caller holds one object."""

from __future__ import annotations

from .bounces.repository import BounceRepository
from .content.repository import StoryRepository
from .delivery.claims import DeliveryRepository
from .issues.repository import IssueRepository, ScheduledRunRepository
from .operators import OperatorRepository
from .subscribers.repository import SubscriberRepository

__all__ = ["Store"]


class Store(
    SubscriberRepository,
    OperatorRepository,
    StoryRepository,
    IssueRepository,
    ScheduledRunRepository,
    DeliveryRepository,
    BounceRepository,
):
    """Every query of the newsletter, over one Database."""

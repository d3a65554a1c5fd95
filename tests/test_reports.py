"""What an issue's numbers mean: the complaint threshold, the same for `status` and the console."""

from datetime import UTC, date, datetime

from newsletter.issues.records import IssueCounts
from newsletter.reports import COMPLAINT_WARNING, complaint_warning, engagement


def counts(accepted: int, complained: int) -> IssueCounts:
    return IssueCounts(
        issue_id=7,
        issue_date=date(2026, 11, 25),
        subject="s",
        status="sent",
        story_count=5,
        created_at=datetime(2026, 11, 25, tzinfo=UTC),
        sent_at=None,
        deliveries={"sent": accepted},
        accepted=accepted,
        complained=complained,
    )


def test_the_complaint_warning_starts_above_a_tenth_of_a_percent() -> None:
    assert COMPLAINT_WARNING == 0.001
    assert complaint_warning(counts(1000, 1)) is None  # exactly 0.1 %: not above
    said = complaint_warning(counts(1000, 2))
    assert said is not None and "issue 7 drew complaints from 0.20%" in said
    assert complaint_warning(counts(0, 0)) is None  # nothing accepted yet: no rate, no warning
    assert engagement(counts(1000, 2))["complaint_warning"] is True
    assert engagement(counts(1000, 1))["rates"]["complained"] == 0.001

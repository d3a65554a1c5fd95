from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from newsletter.content.digest import DigestStory, choose, issue_window

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def item(
    i: int,
    *,
    hours_ago: float = 1,
    section: str = "News",
    image: bool = False,
    summary: str = "s",
    title: str | None = None,
    link: str | None = None,
) -> DigestStory:
    return DigestStory(
        id=i,
        title=title or f"Story {i}",
        link=link or f"https://x.example/{i}",
        source="Src",
        section=section,
        summary=summary,
        bullets=(),
        author=None,
        image=f"https://img.example/{i}.jpg" if image else None,
        published_at=NOW - timedelta(hours=hours_ago),
        fetched_at=NOW,
    )


def test_too_few_stories_give_no_issue() -> None:
    assert choose([item(1)], issue_date=NOW.date(), max_stories=5, min_stories=2) is None
    assert choose([], issue_date=NOW.date(), max_stories=5, min_stories=0) is None


def test_newest_and_best_first_capped_with_a_lead_that_has_an_image() -> None:
    stories = [item(i, hours_ago=i) for i in range(1, 10)] + [item(20, hours_ago=3, image=True)]
    d = choose(stories, issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None
    assert d.lead.id == 20  # the picture's bonus puts it ahead of newer bare headlines
    assert [s.id for s in d.stories] == [20, 1, 2, 3, 4]


def test_sections_follow_the_configured_order() -> None:
    stories = [
        item(1, section="Reviews"),
        item(2, section="Tech News", hours_ago=2),
        item(3, section="Other", hours_ago=3),
        item(4, section="In-Depth", hours_ago=4),
    ]
    d = choose(
        stories,
        issue_date=NOW.date(),
        max_stories=10,
        min_stories=1,
        section_order=["Tech News", "In-Depth", "Reviews"],
    )
    assert d is not None and d.lead.id == 1
    assert [s.name for s in d.sections] == ["Tech News", "In-Depth", "Other"]


def test_the_same_news_twice_is_kept_once() -> None:
    stories = [
        item(1, title="Chip maker cuts prices!"),
        item(2, title="Chip maker cuts prices", hours_ago=2),
        item(3, link="https://x.example/1", hours_ago=3),
        item(4, hours_ago=4),
    ]
    d = choose(stories, issue_date=NOW.date(), max_stories=10, min_stories=1)
    assert d is not None and [s.id for s in d.stories] == [1, 4]


def test_window_ends_now_today_and_at_midnight_for_a_past_date() -> None:
    tz = ZoneInfo("Europe/Berlin")
    since, until = issue_window(date(2026, 11, 25), now=NOW, tz=tz, window_hours=24)
    assert until == NOW and since == NOW - timedelta(hours=24)
    since, until = issue_window(date(2026, 11, 20), now=NOW, tz=tz, window_hours=24)
    assert until == datetime(2026, 11, 21, tzinfo=tz)

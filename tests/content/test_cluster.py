"""Clustering the day's stories: the rules of SPEC 7 on made-up stories and embeddings, and the
quality floor on the labelled sets in tests/data/ with the real model."""

from __future__ import annotations

import html
import json
import tracemalloc
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update

from newsletter.config import DigestSettings, Settings, load_settings
from newsletter.content.cluster import MAX_SPAN, clusters
from newsletter.content.digest import DigestStory, choose
from newsletter.content.render import render_subject
from newsletter.db.models import Issue, Story
from newsletter.operators import hash_password
from newsletter.store import Store
from newsletter.web import create_app

from ..support.helpers import PASSWORD, FeedServer, Route, log_in, recent, rss, run_cli, write_config

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DATA = Path(__file__).parent.parent / "data"
THRESHOLD = DigestSettings.cluster_threshold


@dataclass(frozen=True)
class Told:
    title: str
    summary: str
    source: str
    when: datetime
    bullets: tuple[str, ...] = ()


def meaning(seed: int, *, near: int | None = None) -> np.ndarray:
    """A unit vector; `near` gives one close to that seed's (another telling of the same event)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=384)
    if near is not None:
        v = np.random.default_rng(near).normal(size=384) * 4 + v
    return (v / np.linalg.norm(v)).astype(np.float32)


def blob(v: np.ndarray) -> bytes:
    return v.astype(np.float16).tobytes()


def test_the_same_event_from_three_sources_is_one_cluster_and_other_events_stay_apart() -> None:
    stories = [
        Told(
            "Lava forces evacuation of Grindavik",
            "A fissure opened north of the Icelandic town.",
            "Wire",
            NOW,
        ),
        Told(
            "Iceland volcano erupts near Blue Lagoon",
            "The spa closed as lava flowed to Grindavik.",
            "Post",
            NOW,
        ),
        Told("RIVERS OF FIRE over Iceland's Reykjanes", "", "Tabloid", NOW - timedelta(hours=2)),
        Told("Chip maker raises its forecast", "Demand for servers rose.", "Post", NOW),
        Told("Storm closes ports in the north", "Ferries stayed in harbour.", "Wire", NOW),
    ]
    vectors = np.vstack([meaning(1), meaning(2, near=1), meaning(3, near=1), meaning(7), meaning(8)])
    assert clusters(stories, vectors, threshold=THRESHOLD) == [[0, 1, 2], [3], [4]]


def test_two_stories_of_one_source_are_never_merged() -> None:
    """A source does not cover its own story twice: its update is a story of its own."""
    same = "Central bank holds rates at 4 percent"
    stories = [
        Told(same, "", "Wire", NOW),
        Told(same + " again", "", "Wire", NOW),
        Told(same, "", "Post", NOW),
    ]
    vectors = np.vstack([meaning(1)] * 3)
    groups = clusters(stories, vectors, threshold=THRESHOLD)
    assert sorted(map(len, groups)) == [1, 2]
    assert all(len({stories[i].source for i in g}) == len(g) for g in groups)


def test_stories_published_further_apart_than_the_span_are_not_one_event() -> None:
    """A follow-up hours later ("... restores access") tells new facts: a story of its own."""
    stories = [
        Told("Platform suspends access to its video tool", "", "Wire", NOW - MAX_SPAN - timedelta(hours=1)),
        Told("Platform restores access to its video tool", "", "Post", NOW),
    ]
    vectors = np.vstack([meaning(1), meaning(2, near=1)])
    assert clusters(stories, vectors, threshold=THRESHOLD) == [[0], [1]]


def test_a_chain_of_pairs_does_not_join_groups_that_are_not_alike_on_average() -> None:
    """a ~ b and b ~ c, but a and c unlike: average linkage keeps c out of {a, b}."""
    a, c = meaning(1), meaning(2)
    b = (a + c) / np.linalg.norm(a + c)
    stories = [Told(t, "", s, NOW) for t, s in (("A", "One"), ("B", "Two"), ("C", "Three"))]
    groups = clusters(stories, np.vstack([a, b, c]).astype(np.float32), threshold=0.4)
    assert [0, 1, 2] not in groups and len(groups) == 2


def test_headlines_that_name_different_places_are_different_events() -> None:
    """Two quakes on one day, alike in words and (here) identical in meaning: each headline names
    a country the other story never mentions, so they are two events. A headline that names no
    one may join either (the most alike first); here it tells the first quake. A headline in title case
    is read by how the day's summaries write its words."""
    stories = [
        Told("Magnitude 6.1 earthquake strikes southern Peru", "The quake hit near Arequipa.", "Wire", NOW),
        Told(
            "Earthquake Of Magnitude 5.4 Rattles Western Turkey",
            "Buildings in Turkey shook as far as Izmir.",
            "Post",
            NOW,
        ),
        Told("Strong tremor cracks old churches", "Arequipa shook as the quake hit the city.", "Globe", NOW),
    ]
    same = np.vstack([meaning(1)] * 3)
    assert clusters(stories, same, threshold=THRESHOLD) == [[0, 2], [1]]
    assert clusters(stories, same, threshold=THRESHOLD, names=False) == [[0, 1, 2]]


def test_a_name_the_other_story_mentions_or_an_acronym_of_it_keeps_them_together() -> None:
    """'ECB' in one headline and 'European Central Bank' in the other story's text are one name;
    so are 'Peru' and 'Peruvian'; and a word the day writes in lower case is no name at all."""
    pairs = [
        (
            Told("ECB cuts rates for the first time", "The decision surprised ECB watchers.", "Wire", NOW),
            Told(
                "Lagarde moves as Eurozone borrowing costs fall",
                "The European Central Bank cut.",
                "Post",
                NOW,
            ),
        ),
        (
            Told("Quake damages churches in Peru", "The old town of Cusco shook.", "Wire", NOW),
            Told("Cusco shaken by strong tremor", "Peruvian officials counted the damage.", "Post", NOW),
        ),
        (
            Told(
                "Storm closes ports",
                "A storm in the Storm Coast closed ports; the storm moved on.",
                "Wire",
                NOW,
            ),
            Told("Ferries halted by the Storm", "Harbours shut as the storm hit.", "Post", NOW),
        ),
    ]
    for pair in pairs:
        assert clusters(pair, np.vstack([meaning(1)] * 2), threshold=THRESHOLD) == [[0, 1]], pair[0].title


def story(
    i: int, source: str, *, v: np.ndarray, hours_ago: float = 1, image: bool = False, summary: str = ""
) -> DigestStory:
    return DigestStory(
        id=i,
        title=f"Headline {i}",
        link=f"https://{source.lower()}.example/{i}",
        source=source,
        section="World",
        summary=summary,
        bullets=(),
        author=None,
        image=f"https://img.example/{i}.jpg" if image else None,
        published_at=NOW - timedelta(hours=hours_ago),
        fetched_at=NOW,
        embedding=blob(v),
    )


def test_coverage_ranks_the_most_complete_story_is_the_face_and_every_story_is_used() -> None:
    volcano = [
        story(1, "Wire", v=meaning(1), hours_ago=3),  # bare: not the face
        story(2, "Post", v=meaning(2, near=1), hours_ago=2, summary="Lava reached the wall.", image=True),
        story(3, "Tabloid", v=meaning(3, near=1), hours_ago=1, summary="Stunning pictures."),
    ]
    fresh = [
        story(10 + k, "Blog", v=meaning(10 + k), hours_ago=0.1, image=True, summary="New.") for k in range(3)
    ]
    d = choose([*fresh, *volcano], issue_date=NOW.date(), max_stories=3, min_stories=1)
    assert d is not None
    assert d.lead.id == 2 and [s.id for s in d.lead.also] == [1, 3]  # the widest coverage leads
    assert d.lead.coverage == 3
    assert len(d.stories) == 3  # max_stories counts clusters: the lead and two others
    assert sorted(d.used) == sorted([1, 2, 3, *(s.id for s in d.stories[1:])])


def test_clustering_can_be_turned_off() -> None:
    pair = [story(1, "Wire", v=meaning(1)), story(2, "Post", v=meaning(2, near=1))]
    on = choose(pair, issue_date=NOW.date(), max_stories=5, min_stories=1)
    off = choose(pair, issue_date=NOW.date(), max_stories=5, min_stories=1, cluster=False)
    assert on is not None and off is not None
    assert len(on.stories) == 1 and len(off.stories) == 2


def test_a_backdated_story_is_not_the_face_of_its_cluster() -> None:
    """Three complete tellings of one event: the one whose feed dates it 7 hours before any other
    telling does not win the face by its date alone (an honest scoop within SCOOP still would)."""
    told = [
        story(1, "Wire", v=meaning(1), hours_ago=2, summary="Lava reached the wall.", image=True),
        story(2, "Post", v=meaning(2, near=1), hours_ago=1, summary="The town was evacuated.", image=True),
        story(3, "Hostile", v=meaning(3, near=1), hours_ago=9, summary="Amazing pictures.", image=True),
    ]
    d = choose(told, issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and d.lead.id == 1 and [s.id for s in d.lead.also] == [3, 2]
    honest = choose(told[:2], issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert honest is not None and honest.lead.id == 1  # the earliest believable telling


def test_an_undated_or_future_dated_story_neither_leads_nor_fronts_a_cluster_by_looking_newest(
    settings: Settings,
) -> None:
    """sources.py stores a date in the future as no date; such a story is dated by its fetch, the
    newest possible (that ranks it among the others), yet it is never the lead (nor the subject)
    nor a cluster's face by it."""
    honest = story(1, "Wire", v=meaning(7), hours_ago=3, summary="Rates held.", image=True)
    pushy = replace(
        story(2, "Hostile", v=meaning(8), summary="Read this first.", image=True), published_at=None
    )
    d = choose([pushy, honest], issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and d.lead.id == 1 and [s.id for s in d.stories] == [1, 2]
    assert "Headline 1" in render_subject("{{ lead.title }}", d)
    pair = [honest, replace(pushy, embedding=blob(meaning(9, near=7)))]
    d = choose(pair, issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and d.lead.id == 1 and [s.id for s in d.lead.also] == [2]


def test_the_same_headline_eleven_hours_later_joins_a_reworded_telling_does_not() -> None:
    """Beyond MAX_SPAN the clustering does not join stories: a telling 11 hours later may be a
    follow-up with new facts (the labelled sets' next-morning follow-ups are as alike as their
    events' own tellings; docs/clustering.md). The same headline from another source is the same
    story whenever it comes, and joins as a copy."""
    first = replace(
        story(1, "Wire", v=meaning(1), hours_ago=12, summary="A dam gave way after a week of rain."),
        title="Dam gives way near Riverton after a week of rain",
    )
    copy = replace(story(2, "Post", v=meaning(2, near=1), hours_ago=1), title=first.title)
    reworded = story(3, "Daily", v=meaning(3, near=1), hours_ago=1, summary="The dam failed; homes flooded.")
    d = choose([first, copy], issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and len(d.stories) == 1 and d.lead.coverage == 2
    d = choose([first, reworded], issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and len(d.stories) == 2


def clustered_with_peak(stories: list[Told], vectors: np.ndarray) -> tuple[list[list[int]], int]:
    """The clusters at the default threshold, and the peak of memory allocated while made."""
    tracemalloc.start()
    try:
        groups = clusters(stories, vectors, threshold=THRESHOLD)
        return groups, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_day_is_clustered_in_bounded_memory() -> None:
    """2,500 stories within a day: likeness is worked out a block of pairs at a time in float32,
    so the peak stays far under one 2,500 x 2,500 float64 matrix per step (50 MB each)."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(2500, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = "harbour council storm budget rail strike vote court fire bank".split()
    stories = [
        Told(
            f"{words[k % 10].title()} {words[(k * 7) % 10]} report {k % 97}",
            f"Officials in Town{k % 50} said the {words[(k * 3) % 10]} would {words[(k * 5) % 10]}.",
            f"Source {k % 40}",
            NOW - timedelta(minutes=k % 1440),
        )
        for k in range(2500)
    ]
    groups, peak = clustered_with_peak(stories, vectors)
    assert sorted(i for g in groups for i in g) == list(range(2500))
    assert peak < 60 * 2**20, peak


def test_a_day_of_near_identical_syndicated_stories_is_clustered_in_bounded_memory() -> None:
    """2,000 near-copies of one wire story from 10 sources: nearly every pair is alike, so the
    pairs kept would grow with the square of the day (a hostile or syndicated day took 388 MB);
    each story keeps its PARTNERS nearest, and each cluster still has one story a source."""
    rng = np.random.default_rng(9)
    vectors = (rng.normal(size=384) + 0.05 * rng.normal(size=(2000, 384))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text = "Stocks fell as tech shares slid on rate worries."
    stories = [
        Told(f"Stocks fall as tech shares slide, report {k}", text, f"Wire {k % 10}", NOW)
        for k in range(2000)
    ]
    groups, peak = clustered_with_peak(stories, vectors)
    assert sorted(i for g in groups for i in g) == list(range(2000))
    assert all(len({stories[i].source for i in g}) == len(g) for g in groups)
    assert max(len(g) for g in groups) == 10
    assert peak < 100 * 2**20, peak


def labelled(name: str) -> list[Told]:
    raw = json.loads((DATA / name).read_text())["stories"]
    return [
        Told(
            html.unescape(s["title"]),
            html.unescape(s.get("summary") or ""),
            s["source"],
            datetime.fromisoformat(s["published"]),
        )
        for s in raw
    ]


def pairwise(events: list[str], groups: list[list[int]]) -> tuple[float, float]:
    """Pairwise precision and recall of `groups` against the events' labels."""
    truth = {(a, b) for a, b in combinations(range(len(events)), 2) if events[a] == events[b]}
    found = {(a, b) for g in groups for a, b in combinations(sorted(g), 2)}
    hit = len(truth & found)
    return hit / len(found), hit / len(truth)


def test_the_labelled_sets_are_clustered_at_the_measured_quality() -> None:
    """The floors sit a little under what benchmarks/clustering.py measures with the default
    threshold (P 0.963 R 0.908, P 0.973 R 0.877, the outside reviewer's near misses P 0.829 R 1.0,
    the check set written before the names rule P 0.842 R 0.762): a change that makes any of them
    worse fails here."""
    from newsletter.content.embed import embed, story_text

    floors = {
        "clusters.json": (0.95, 0.89),
        "clusters_holdout.json": (0.96, 0.86),
        "clusters_review.json": (0.80, 0.95),
        "clusters_check.json": (0.82, 0.74),
    }
    raw = {name: json.loads((DATA / name).read_text())["stories"] for name in floors}
    for name, (precision_floor, recall_floor) in floors.items():
        stories = labelled(name)
        vectors = embed([story_text(s.title, s.summary, s.bullets) for s in stories])
        groups = clusters(stories, vectors, threshold=THRESHOLD)
        precision, recall = pairwise([s["event"] for s in raw[name]], groups)
        assert precision >= precision_floor and recall >= recall_floor, (name, precision, recall)


def build_from(
    tmp_path: Path, feed_server: FeedServer, feeds: dict[str, list[dict[str, Any]]]
) -> tuple[Path, Any]:
    """Each feed served over HTTP as a source named after it; `build --json` on a new database."""
    for name, items in feeds.items():
        feed_server.routes[f"/{name}"] = Route(rss(items, title=name))
    config = write_config(tmp_path, sources=[(n.title(), feed_server.url(f"/{n}")) for n in feeds])
    run_cli(config, "init")
    return config, json.loads(run_cli(config, "build", "--json").stdout)


def test_one_event_from_three_feeds_is_one_item_in_the_issue_the_json_and_the_console(
    tmp_path: Path, feed_server: FeedServer, env: None
) -> None:
    """SPEC 7 end to end: three feeds over HTTP tell one event in their own words, beside stories
    of other events; `build --json` prints one item for it with the other two in "also", the
    mail says "Also covered by", every story of the cluster is used, and the console lists the
    cluster's sources."""
    when = recent(2)
    feeds = {
        "wire": [
            {
                "title": "Volcano erupts on Iceland's Reykjanes peninsula, Grindavik evacuated",
                "link": "https://wire.example/volcano",
                "date": when,
                "description": "Lava fountains rose from a fissure north of the fishing town overnight.",
            },
            {
                "title": "Chip maker lifts its sales forecast on server demand",
                "link": "https://wire.example/chips",
                "date": when,
                "description": "Orders from data centres rose for a third quarter.",
            },
        ],
        "post": [
            {
                "title": "Iceland: new fissure opens near Blue Lagoon as lava flows toward Grindavik",
                "link": "https://post.example/iceland",
                "date": when - timedelta(hours=1),
                "image": "https://post.example/lava.jpg",
                "description": "The eruption began after midnight; the town was evacuated, the spa closed.",
            },
            {
                "title": "City council approves a new tram line to the harbour",
                "link": "https://post.example/tram",
                "date": when,
                "description": "Construction is to start next spring.",
            },
        ],
        "daily": [
            {
                "title": "Lava lights up the sky over Grindavik as residents flee the eruption",
                "link": "https://daily.example/lava",
                "date": when - timedelta(hours=2),
                "description": "",
            },
        ],
    }
    config, built = build_from(tmp_path, feed_server, feeds)
    items = built["items"]
    assert built["issue"]["stories"] == len(items) == 3  # the volcano once, chips, tram
    lead = items[0]
    assert lead["link"] == "https://post.example/iceland"  # the most complete: a summary and an image
    assert lead["source"] == "Post" and "section" in lead
    assert [(a["source"], a["link"]) for a in lead["also"]] == [
        ("Daily", "https://daily.example/lava"),
        ("Wire", "https://wire.example/volcano"),
    ]
    assert all(item["also"] == [] for item in items[1:])
    again = json.loads(run_cli(config, "build", "--json").stdout)  # an issue already built
    assert not again["created"] and again["items"] == items

    store = Store(load_settings(config).database_url)
    issue = store.get_issue(built["issue"]["id"])
    assert issue is not None
    assert "Also covered by" in issue.html
    assert (
        'href="https://wire.example/volcano"' in issue.html
        and 'href="https://daily.example/lava"' in issue.html
    )
    assert (
        "Also covered by:\n  Daily: https://daily.example/lava\n  Wire: https://wire.example/volcano"
        in issue.text
    )
    with store.read() as s:
        used = {st.link for st in s.scalars(select(Story).where(Story.issue_id == issue.id))}
    assert used == {
        "https://wire.example/volcano",
        "https://post.example/iceland",
        "https://daily.example/lava",
        "https://wire.example/chips",
        "https://post.example/tram",
    }
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    nothing = json.loads(run_cli(config, "build", "--date", tomorrow, "--json").stdout)
    assert nothing["issue"] is None  # none of the cluster comes back the next day

    store.save_operator("ed", hash_password(PASSWORD), now=datetime.now(UTC))
    client = create_app(load_settings(config), store=store).test_client()
    log_in(client)
    page = client.get(f"/admin/issues/{issue.id}").get_data(as_text=True)
    row = page[page.index('id="items"') :]
    assert ">Post</a>, <a" in row and ">Daily</a>" in row and ">Wire</a>" in row

    # items edited by hand into another shape: each story alone, in the console and the JSON
    for damaged in ([1, 2], {"a": 1}, [["x"]], [[True]]):
        with store.write() as s:
            s.execute(update(Issue).where(Issue.id == issue.id).values(items=damaged))
        assert client.get(f"/admin/issues/{issue.id}").status_code == 200
        shown = json.loads(run_cli(config, "build", "--json").stdout)["items"]
        assert sorted(i["link"] for i in shown) == sorted(used) and all(i["also"] == [] for i in shown)


def test_a_feed_that_lies_about_its_dates_wins_neither_the_face_nor_the_subject(
    tmp_path: Path, feed_server: FeedServer, env: None
) -> None:
    """End to end: the hostile feed tells the day's big event backdated by 7 hours (so its story
    would be "the earliest"), and a story of its own dated next year (so it would be "the
    newest"). The event's face is the honest earliest telling and the subject is that event's;
    the story dated next year is kept undated (digest-level tests show it never leads)."""
    when = recent(2)
    event = "Lava reached the harbour wall overnight; the fishing town was evacuated."
    feeds = {
        "wire": [
            {
                "title": "Volcano erupts on Reykjanes, Grindavik evacuated",
                "link": "https://wire.example/volcano",
                "date": when,
                "image": "https://wire.example/lava.jpg",
                "description": event,
            },
            {
                "title": "Chip maker lifts its forecast",
                "link": "https://wire.example/chips",
                "date": when - timedelta(hours=1),
                "image": "https://wire.example/chips.jpg",
                "description": "Server demand rose.",
            },
        ],
        "post": [
            {
                "title": "Iceland evacuates Grindavik as lava flows from new fissure",
                "link": "https://post.example/iceland",
                "date": when + timedelta(hours=1),
                "image": "https://post.example/lava.jpg",
                "description": "The Reykjanes eruption began after midnight near Grindavik.",
            },
        ],
        "hostile": [
            {
                "title": "Grindavik lava: see the incredible pictures from Iceland",
                "link": "https://hostile.example/lava",
                "date": when - timedelta(hours=7),
                "image": "https://hostile.example/lava.jpg",
                "description": "Lava near Grindavik on Reykjanes: our gallery of the Iceland eruption.",
            },
            {
                "title": "You will not believe this gadget",
                "link": "https://hostile.example/gadget",
                "date": datetime.now(UTC) + timedelta(days=365),
                "image": "https://hostile.example/gadget.jpg",
                "description": "Read this first, every day.",
            },
        ],
    }
    config, built = build_from(tmp_path, feed_server, feeds)
    links = [item["link"] for item in built["items"]]
    assert links == [  # the undated gadget ranks as fetched, the newest: after the lead all the same
        "https://wire.example/volcano",
        "https://hostile.example/gadget",
        "https://wire.example/chips",
    ]
    assert sorted(a["source"] for a in built["items"][0]["also"]) == ["Hostile", "Post"]
    store = Store(load_settings(config).database_url)
    issue = store.get_issue(built["issue"]["id"])
    assert issue is not None and issue.subject.endswith("Volcano erupts on Reykjanes, Grindavik evacuated")
    with store.read() as s:
        dates = {link: when for link, when in s.execute(select(Story.link, Story.published_at))}
    assert dates["https://hostile.example/gadget"] is None and dates["https://wire.example/chips"] is not None


def test_the_labelled_sets_are_well_formed() -> None:
    """Each id and link once, and no event told twice by one source (a source's own follow-up is
    an event of its own): what the sets promise in tests/data/README.md."""
    for name in ("clusters.json", "clusters_holdout.json", "clusters_review.json", "clusters_check.json"):
        stories = json.loads((DATA / name).read_text())["stories"]
        assert len({s["id"] for s in stories}) == len({s["link"] for s in stories}) == len(stories)
        told = [(s["event"], s["source"]) for s in stories]
        assert len(set(told)) == len(told), name
        assert len({s["source"] for s in stories}) >= 8
        assert len(stories) >= (40 if name in ("clusters_review.json", "clusters_check.json") else 120)


def test_the_same_headline_from_another_source_is_named_not_dropped() -> None:
    """An exact copy (same headline, or same link) from a second source is that source's telling
    of the event: it counts for coverage and shows under "Also covered by"."""
    first = replace(
        story(1, "Alpha", v=meaning(1), summary="A dam gave way after a week of rain."),
        title="Dam gives way near Riverton after a week of rain",
    )
    # the copy is newer and has a picture: still not the face, which is the first telling's
    second = replace(story(2, "Beta", v=meaning(9), hours_ago=0.5, image=True), title=first.title)
    d = choose([first, second], issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and len(d.stories) == 1
    assert d.lead.id == 1 and [s.source for s in d.lead.also] == ["Beta"] and d.lead.coverage == 2


def test_a_generic_headline_shared_by_two_sources_is_no_proof_of_one_event() -> None:
    """Two sources' "Morning briefing" about different things are two items, each told."""
    pension = replace(
        story(1, "Alpha", v=meaning(1), summary="The pension bill passed."), title="Morning Briefing"
    )
    ferry = replace(story(2, "Beta", v=meaning(9), summary="A ferry ran aground."), title="Morning briefing:")
    d = choose([pension, ferry], issue_date=NOW.date(), max_stories=5, min_stories=1)
    assert d is not None and sorted(s.id for s in d.stories) == [1, 2]
    assert all(not s.also for s in d.stories) and sorted(d.used) == [1, 2]


def test_a_feed_reusing_anothers_link_and_headline_neither_merges_nor_speaks_for_them() -> None:
    """A hostile source's item with one source's link and another's headline: the clustering
    reads what it says, so it neither joins unrelated stories into one item, nor becomes the
    face or the lead of a real event told by two sources."""
    quake = [
        story(1, "Alpha", v=meaning(1), summary="A magnitude 6.1 quake struck."),
        story(2, "Beta", v=meaning(2, near=1), summary="Twelve died in the quake."),
    ]
    profit = story(3, "Alpha", v=meaning(3), summary="Acme reported record profit.")
    bakery = replace(
        story(4, "Beta", v=meaning(4), summary="The bakery won a prize."), title="Local bakery wins award"
    )
    hostile = replace(
        story(5, "Hostile", v=meaning(5), hours_ago=0.1, image=True, summary="Claim your free coins."),
        title=bakery.title,
        link=profit.link,
    )
    d = choose([*quake, profit, bakery, hostile], issue_date=NOW.date(), max_stories=10, min_stories=1)
    assert d is not None and d.lead.id in (1, 2) and d.lead.coverage == 2
    assert {s.id for s in d.stories} == {d.lead.id, 3, 4, 5}
    assert all(not s.also for s in d.stories if s is not d.lead)


def test_stories_without_vectors_are_judged_by_their_words() -> None:
    """Stored while the model could not run: such stories still cluster by their words, on the
    blend's scale, instead of never (a zero vector would keep them apart for good)."""
    told = "Dam gives way near Riverton after a week of rain; hundreds of homes flooded"
    stories = [
        Told(told, "Rescuers reached Riverton by boat.", "Wire", NOW),
        Told(told, "Riverton homes flooded as the dam gave way.", "Post", NOW),
        Told("Chip maker lifts forecast", "Server demand rose.", "Blog", NOW),
    ]
    vectors = np.vstack([meaning(1), np.zeros(384, np.float32), meaning(3)]).astype(np.float32)
    assert clusters(stories, vectors, threshold=THRESHOLD)[0] == [0, 1]
    assert clusters(stories, None, threshold=THRESHOLD)[0] == [0, 1]

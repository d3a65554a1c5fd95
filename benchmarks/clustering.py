"""Clustering quality and speed: pairwise precision and recall on the labelled sets in tests/data/,
and the time to cluster 2,000 stories (their vectors made beforehand, as gather makes them when
it stores a story). `python benchmarks/clustering.py --compare` also scores the methods that were
tried and not chosen (README's "Clustering" section gives their figures)."""

from __future__ import annotations

import functools
import html
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import DigestSettings  # noqa: E402
from newsletter.content import cluster  # noqa: E402
from newsletter.content.embed import embed, story_text  # noqa: E402

DATA = ROOT / "tests" / "data"
SETS = ("clusters.json", "clusters_holdout.json", "clusters_review.json")
THRESHOLD = DigestSettings.cluster_threshold


@dataclass(frozen=True)
class Labelled:
    """A story of a labelled set as the clustering sees it, and its event label."""

    title: str
    summary: str
    source: str
    when: datetime
    event: str
    bullets: tuple[str, ...] = ()


def load(name: str) -> list[Labelled]:
    raw = json.loads((DATA / name).read_text())["stories"]
    return [
        Labelled(
            html.unescape(s["title"]),  # as the feed reader gives a title: entities decoded
            html.unescape(s.get("summary") or ""),
            s["source"],
            datetime.fromisoformat(s["published"]),
            s["event"],
        )
        for s in raw
    ]


def vectors(stories: Sequence[Labelled]) -> Any:
    return embed([story_text(s.title, s.summary, s.bullets) for s in stories])


def score(stories: Sequence[Labelled], groups: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Pairwise precision and recall of `groups` against the stories' event labels."""
    truth = {(a, b) for a, b in combinations(range(len(stories)), 2) if stories[a].event == stories[b].event}
    found = {(a, b) for g in groups for a, b in combinations(sorted(g), 2)}
    hit = len(truth & found)
    return (hit / len(found) if found else 1.0), (hit / len(truth) if truth else 1.0)


def rows(compare: bool = False) -> list[tuple[str, str, str]]:
    out = []
    sets = {name: load(name) for name in SETS}
    made = {name: vectors(stories) for name, stories in sets.items()}
    tries: list[tuple[str, Callable[[Sequence[Labelled], Any], list[list[int]]]]] = [
        (
            f"blend, threshold {THRESHOLD:g} (the default)",
            lambda s, v: cluster.clusters(s, v, threshold=THRESHOLD),
        )
    ]
    if compare:
        for t in (0.3, 0.32, 0.34, 0.38):
            tries.append((f"blend, threshold {t:g}", functools.partial(_at, threshold=t)))
        tries += [
            ("words alone (TF-IDF), 0.2", lambda s, v: cluster.clusters(s, None, threshold=0.2)),
            (
                "blend, no time span",
                lambda s, v: cluster.clusters(s, v, threshold=THRESHOLD, max_span=timedelta(days=9)),
            ),
        ]
    for label, method in tries:
        for name, stories in sets.items():
            p, r = score(stories, method(stories, made[name]))
            out.append((f"clustering: {label}, {name}", f"P {p:.3f} R {r:.3f}", f"{len(stories)} stories"))
    stories = [s for name in SETS for s in sets[name]]
    import numpy as np

    both = np.vstack([made[name] for name in SETS])
    reps = -(-2000 // len(stories))
    big = [
        Labelled(s.title, s.summary, f"{s.source} {k // len(stories)}", s.when, s.event)
        for k, s in enumerate(stories * reps)
    ][:2000]
    big_vectors = np.vstack([both] * reps)[:2000]
    best = min(_timed(lambda: cluster.clusters(big, big_vectors, threshold=THRESHOLD)) for _ in range(3))
    out.append(
        ("cluster 2,000 stories (vectors made at gather)", f"{best * 1000:.0f} ms", "best of 3; target < 1 s")
    )
    start = time.perf_counter()
    vectors(stories[:200])
    out.append(
        (
            "embed 200 stories (a day's gather)",
            f"{(time.perf_counter() - start) * 1000:.0f} ms",
            "once a story",
        )
    )
    return out


def _at(stories: Sequence[Labelled], vectors: Any, *, threshold: float) -> list[list[int]]:
    return cluster.clusters(stories, vectors, threshold=threshold)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    for row in rows("--compare" in sys.argv):
        print(" | ".join(row))

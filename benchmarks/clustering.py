"""Clustering quality and speed: pairwise precision and recall on the labelled sets in tests/data/,
and the time to cluster 2,000 stories. `python benchmarks/clustering.py --compare` also scores the
other methods that were tried (the note in the README says what each scored)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from newsletter.config import DigestSettings  # noqa: E402
from newsletter.content import cluster  # noqa: E402

DEFAULT = DigestSettings.cluster_threshold

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SETS = ("clusters.json", "clusters_holdout.json")


@dataclass(frozen=True)
class Labelled:
    id: str
    source: str
    title: str
    summary: str
    event: str
    bullets: tuple[str, ...] = ()


def load(name: str) -> list[Labelled]:
    raw = json.loads((DATA / name).read_text())["stories"]
    return [Labelled(s["id"], s["source"], s["title"], s.get("summary") or "", s["event"]) for s in raw]


def pairs_of(groups: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
    return {(a, b) for g in groups for a, b in combinations(sorted(g), 2)}


def score(stories: Sequence[Labelled], groups: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Pairwise precision and recall of `groups` against the stories' event labels."""
    by_event: dict[str, list[int]] = {}
    for i, s in enumerate(stories):
        by_event.setdefault(s.event, []).append(i)
    truth = pairs_of(list(by_event.values()))
    found = pairs_of(groups)
    hit = len(truth & found)
    return (hit / len(found) if found else 1.0), (hit / len(truth) if truth else 1.0)


Method = Callable[[Sequence[Labelled], float], list[list[int]]]


def tfidf(stories: Sequence[Labelled], threshold: float) -> list[list[int]]:
    return cluster.clusters(stories, threshold=threshold)


def newsblur(stories: Sequence[Labelled], threshold: float) -> list[list[int]]:
    """NewsBlur's rule: titles share at least 3 words and `threshold` of the shorter title's words."""
    sets = [set(re.findall(r"\w+", s.title.lower())) - cluster._STOP for s in stories]
    return _single_link(stories, lambda i, j: _overlap(sets[i], sets[j], threshold))


def _overlap(a: set[str], b: set[str], share: float) -> bool:
    common = len(a & b)
    return common >= 3 and common >= share * min(len(a), len(b))


def jaccard(stories: Sequence[Labelled], threshold: float) -> list[list[int]]:
    """Jaccard of stemmed word sets (what MinHash estimates), single link."""
    sets = [set(cluster.words(f"{s.title} {s.summary}")) for s in stories]
    return _single_link(
        stories, lambda i, j: len(sets[i] & sets[j]) >= threshold * len(sets[i] | sets[j])
    )


def _single_link(stories: Sequence[Labelled], same: Callable[[int, int], bool]) -> list[list[int]]:
    parent = list(range(len(stories)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in combinations(range(len(stories)), 2):
        if stories[i].source != stories[j].source and same(i, j):
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(stories)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def synthetic(n: int) -> list[Labelled]:
    """`n` stories for the speed row: the labelled set repeated with the words shuffled a little."""
    base = [s for name in SETS for s in load(name)]
    out = []
    for k in range(n):
        s = base[k % len(base)]
        tag = f"x{k // len(base)}"
        out.append(Labelled(f"{s.id}-{k}", f"{s.source}{tag}", f"{s.title} {tag}", s.summary, s.event + tag))
    return out


def rows(compare: bool) -> list[tuple[str, str, str]]:
    out = []
    methods: list[tuple[str, Method, Sequence[float]]] = [("tf-idf cosine", tfidf, (DEFAULT,))]
    if compare:
        methods = [
            ("tf-idf cosine", tfidf, (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)),
            ("title overlap (NewsBlur)", newsblur, (0.6,)),
            ("word-set Jaccard", jaccard, (0.2, 0.3, 0.4)),
        ]
    for label, method, thresholds in methods:
        for threshold in thresholds:
            for name in SETS:
                stories = load(name)
                p, r = score(stories, method(stories, threshold))
                out.append((f"{label} {threshold:g}, {name}", f"P {p:.3f} R {r:.3f}", f"{len(stories)} stories"))
    stories = synthetic(2000)
    best = min(_timed(lambda: cluster.clusters(stories, threshold=DEFAULT)) for _ in range(3))
    out.append(("cluster 2,000 stories", f"{best * 1000:.0f} ms", "best of 3"))
    return out


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    for row in rows("--compare" in sys.argv):
        print(" | ".join(row))

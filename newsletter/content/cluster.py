"""Pure: which of the day's stories from different sources report the same event.

Each story becomes a weighted bag of words (TF-IDF over the day's own stories, headline words
counted twice); two stories are alike by the cosine of their bags. Stories are joined, most alike
first, into clusters whose stories are on average at least `threshold` alike, never two from one
source. The method and the default threshold were chosen by precision and recall on the labelled
sets in tests/data/ (make bench prints them)."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

__all__ = ["Clusterable", "clusters", "similarities", "words"]

TITLE_WEIGHT = 2.0
# A word in more than this share of the day's stories says nothing about which event a story is.
_COMMON_SHARE = 0.2

_WORD = re.compile(r"[^\W_]+(?:['’.][^\W_]+)*")
_STOP = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my no nor not now of off on once only or other our ours out over own same she should so some
    such than that the their theirs them then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours says said
    say new news report reports reported update live latest today yesterday week year day first last
    one two three after amid over per via vs breaking watch video photos exclusive""".split()
)


class Clusterable(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def bullets(self) -> tuple[str, ...]: ...
    @property
    def source(self) -> str: ...


def words(text: str) -> list[str]:
    """Lower-case word stems without accents; numbers kept, the commonest English words dropped."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    out = []
    for w in _WORD.findall(folded):
        w = w.replace("’", "'").replace(".", "")
        if w.endswith("'s"):
            w = w[:-2]
        if len(w) < 2 or w in _STOP:
            continue
        out.append(_stem(w))
    return out


def _stem(w: str) -> str:
    """A light stemmer: plurals and the commonest verb endings, so 'recalls', 'recalled' and
    'recalling' meet; long words only, so names are left as they are."""
    if w.isdigit() or len(w) <= 4:
        return w
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 4:
            if suffix == "es" and not w.endswith(("ches", "shes", "xes", "sses", "zes")):
                continue
            if suffix == "s" and w.endswith("ss"):
                continue
            return w[: -len(suffix)] + keep
    return w


def _vectors(stories: Sequence[Clusterable]) -> list[dict[str, float]]:
    """Unit-length TF-IDF vectors, the IDF taken over these stories."""
    bags: list[dict[str, float]] = []
    for s in stories:
        bag: dict[str, float] = defaultdict(float)
        for w in words(s.title):
            bag[w] += TITLE_WEIGHT
        for w in words(" ".join((s.summary, *s.bullets))):
            bag[w] += 1.0
        bags.append(bag)
    n = len(bags)
    df: dict[str, int] = defaultdict(int)
    for bag in bags:
        for w in bag:
            df[w] += 1
    limit = max(2, int(n * _COMMON_SHARE))
    vectors = []
    for bag in bags:
        vec = {
            w: (1 + math.log(tf)) * math.log((n + 1) / (df[w] + 0.5))
            for w, tf in bag.items()
            if df[w] <= limit
        }
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vectors.append({w: v / norm for w, v in vec.items()})
    return vectors


def similarities(stories: Sequence[Clusterable], *, floor: float = 0.05) -> dict[tuple[int, int], float]:
    """Cosine of every pair (i < j) of stories from different sources that share a word, above `floor`."""
    vectors = _vectors(stories)
    postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, vec in enumerate(vectors):
        for w, v in vec.items():
            postings[w].append((i, v))
    dots: dict[tuple[int, int], float] = defaultdict(float)
    for posting in postings.values():
        for a in range(len(posting)):
            i, vi = posting[a]
            for j, vj in posting[a + 1 :]:
                dots[i, j] += vi * vj
    sources = [s.source for s in stories]
    return {pair: d for pair, d in dots.items() if d > floor and sources[pair[0]] != sources[pair[1]]}


def clusters(stories: Sequence[Clusterable], *, threshold: float) -> list[list[int]]:
    """Groups of indexes into `stories`, each group one event, every story in exactly one group.

    Average linkage: two groups join when their stories are on average at least `threshold`
    alike and no source is in both; the most alike pairs are tried first."""
    sim = similarities(stories)
    group_of = list(range(len(stories)))
    members: dict[int, list[int]] = {i: [i] for i in range(len(stories))}
    sources: dict[int, set[str]] = {i: {s.source} for i, s in enumerate(stories)}
    for (i, j), value in sorted(sim.items(), key=lambda kv: (-kv[1], kv[0])):
        if value < threshold:
            break
        a, b = group_of[i], group_of[j]
        if a == b or sources[a] & sources[b]:
            continue
        pairs = [(min(x, y), max(x, y)) for x in members[a] for y in members[b]]
        if sum(sim.get(p, 0.0) for p in pairs) / len(pairs) < threshold:
            continue
        for x in members[b]:
            group_of[x] = a
        members[a] += members.pop(b)
        sources[a] |= sources.pop(b)
    return [sorted(m) for m in sorted(members.values(), key=min)]

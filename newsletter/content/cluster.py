"""Pure: which of the day's stories from different sources report the same event.

Two stories are alike by a blend of two cosines: of their sentence embeddings (all-MiniLM-L6-v2,
computed once per story when it is stored: it knows that "dies" and "passes away" say the same)
and of their TF-IDF word bags over the day's own stories (it knows that two stories name the
same rare place or person). Stories are joined, most alike first, into clusters:

- a pair starts a join when it is at least `threshold` alike;
- the two groups' stories must then be on average at least GROUP_SHARE x `threshold` alike;
- a cluster never holds two stories of one source, nor stories published more than MAX_SPAN
  apart (a follow-up with new facts, hours later, is a story of its own);
- nor two groups whose headlines name different people or places, neither mentioned by the
  other group (likeness.differ: two quakes in two countries, two central banks).

Only pairs published within MAX_SPAN of each other are ever compared, a block of them at a time
in float32: memory grows with the stories, not with their square. The method, the weights and
the default threshold were chosen by pairwise precision and recall on the labelled sets in
tests/data/ (benchmarks/clustering.py prints them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from .likeness import Bags, Reading, Told, day_names, differ, headline_names

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["EMBEDDING_WEIGHT", "GROUP_SHARE", "MAX_SPAN", "WORDS_ALONE", "Clusterable", "clusters"]

EMBEDDING_WEIGHT = 0.7  # the rest is the TF-IDF cosine
# Without vectors, a TF-IDF cosine of 0.55 x the threshold makes a pair (the best words alone
# measured on tests/data/).
WORDS_ALONE = 0.55
GROUP_SHARE = 0.7
MAX_SPAN = timedelta(hours=10)
# Pairs likened at once: a float32 block of this many is 4 MB, whatever the day's size.
BLOCK_PAIRS = 1 << 20
# At most this many earlier partners a story, the most alike (a cluster has one story a source).
PARTNERS = 64


class Clusterable(Told, Protocol):
    @property
    def source(self) -> str: ...
    @property
    def when(self) -> datetime: ...


def clusters(
    stories: Sequence[Clusterable],
    embeddings: NDArray[np.float32] | None,
    *,
    threshold: float,
    max_span: timedelta = MAX_SPAN,
    names: bool = True,
) -> list[list[int]]:
    """Groups of indexes into `stories`, each group one event, every story in exactly one group,
    groups in the order of their first story. `embeddings` are unit rows, one a story (a zero
    row for a story without one), or None to go by words alone; `names=False` leaves out the
    headline-names check (benchmarks/clustering.py measures what it is worth)."""
    import numpy as np

    n = len(stories)
    if n < 2:
        return [[i] for i in range(n)]
    day = _Day(stories, embeddings, max_span)
    i, j, alike = day.pairs(threshold)
    # most alike first; ties in the stories' own order, so runs repeat
    first_of, second_of = np.minimum(day.order[i], day.order[j]), np.maximum(day.order[i], day.order[j])
    ranked = np.lexsort((second_of, first_of, -alike))

    readings = [Reading(stories[k]) for k in day.order] if names else []
    known = day_names(readings)
    groups = {
        k: _Group(day, k, headline_names(readings[k], known) if known else frozenset()) for k in range(n)
    }
    group_of = list(range(n))
    later, earlier = i.tolist(), j.tolist()
    for k in ranked.tolist():
        keep, gone = group_of[later[k]], group_of[earlier[k]]
        a, b = groups[keep], groups[gone]
        if a is b or a.sources & b.sources:
            continue
        if max(a.last, b.last) - min(a.first, b.first) > day.span:
            continue
        if a.likeness(b) < GROUP_SHARE * threshold:
            continue
        if a.names and b.names and differ(a.names, a.mentioned(readings), b.names, b.mentioned(readings)):
            continue
        for x in b.members:
            group_of[x] = keep
        a.join(groups.pop(gone))
    found = [sorted(int(day.order[x]) for x in g.members) for g in groups.values()]
    return sorted(found, key=min)


class _Group:
    """A cluster as it grows: its stories, and the sums that make its average likeness with
    another group a few dot products (the mean of pairwise dot products is the dot product of
    the sums), however large the two are."""

    def __init__(self, day: _Day, k: int, names: frozenset[str]) -> None:
        self.members = [k]
        self.sources = {int(day.source[k])}
        self.first = self.last = float(day.hours[k])
        self.names = names
        self._mentions: frozenset[str] | None = None
        has = bool(day.has[k])
        # the story's own (shared, read-only) until the group grows: most stories stay alone
        self.vector: NDArray[np.floating[Any]] | None = day.vectors[k] if has else None
        self.words: dict[int, float] = day.bags.rows[k]
        self.words_with_vectors: dict[int, float] = self.words if has else {}
        self._own = False

    def likeness(self, other: _Group) -> float:
        """The average blended likeness of this group's stories with the other's: the blend for a
        pair of stories with vectors, their words on the blend's scale for any other pair."""
        both = _dot(self.words_with_vectors, other.words_with_vectors)
        meaning = 0.0 if self.vector is None or other.vector is None else float(self.vector @ other.vector)
        total = EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * both
        total += (_dot(self.words, other.words) - both) / WORDS_ALONE
        return total / (len(self.members) * len(other.members))

    def mentioned(self, readings: Sequence[Reading]) -> frozenset[str]:
        if self._mentions is None:
            self._mentions = frozenset().union(*(readings[k].mentions for k in self.members))
        return self._mentions

    def join(self, other: _Group) -> None:
        self.members += other.members
        self.sources |= other.sources
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.names |= other.names
        if self._mentions is not None and other._mentions is not None:
            self._mentions |= other._mentions
        else:
            self._mentions = None
        if other.vector is not None:
            self.vector = (
                other.vector.astype("float64") if self.vector is None else self.vector + other.vector
            )
        if not self._own:
            self.words, self.words_with_vectors = dict(self.words), dict(self.words_with_vectors)
            self._own = True
        for mine, theirs in ((self.words, other.words), (self.words_with_vectors, other.words_with_vectors)):
            for w, v in theirs.items():
                mine[w] = mine.get(w, 0.0) + v


def _dot(a: dict[int, float], b: dict[int, float]) -> float:
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    return sum(v * large.get(w, 0.0) for w, v in small.items())


def _nearest(
    r: NDArray[np.int64], c: NDArray[np.int64], alike: NDArray[np.float32]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    """The pairs of a block, each later story's PARTNERS most alike at most: on a day of many
    near-identical syndicated stories the pairs would grow with the square of the day, and a
    cluster holds one story a source, so a story's nearest partners are the ones that count."""
    import numpy as np

    if len(r) == 0 or np.bincount(r).max() <= PARTNERS:
        return r, c, alike
    order = np.lexsort((-alike, r))  # by story, most alike first
    r, c, alike = r[order], c[order], alike[order]
    starts = np.searchsorted(r, r, side="left")
    rank = np.arange(len(r)) - starts
    keep = rank < PARTNERS
    return r[keep], c[keep], alike[keep]


class _Day:
    """The stories in the order of their time (so the pairs within MAX_SPAN of a story are a
    range of its neighbours), with what their likeness is made of."""

    def __init__(
        self, stories: Sequence[Clusterable], embeddings: NDArray[np.float32] | None, max_span: timedelta
    ) -> None:
        import numpy as np

        hours = np.array([s.when.timestamp() / 3600 for s in stories])
        self.order = np.argsort(hours, kind="stable")
        self.hours = hours[self.order]
        self.span = max_span.total_seconds() / 3600
        names = {name: k for k, name in enumerate(dict.fromkeys(s.source for s in stories))}
        self.source = np.array([names[stories[k].source] for k in self.order])
        self.bags = Bags([stories[k] for k in self.order])
        if embeddings is None:
            self.vectors = np.zeros((len(stories), 1), dtype=np.float32)
        else:
            self.vectors = np.asarray(embeddings, dtype=np.float32)[self.order]
        self.has = np.linalg.norm(self.vectors, axis=1) > 0
        self.every_story_has_a_vector = bool(self.has.all())

    def pairs(self, threshold: float) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        """(i, j, likeness) of every pair of stories of different sources, within the span, at
        least `threshold` alike: i the later story, j the earlier (positions in time order)."""
        import numpy as np

        found: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]] = []
        n = len(self.hours)
        start = 0
        while start < n:
            low = int(np.searchsorted(self.hours, self.hours[start] - self.span, side="left"))
            rows = max(1, min(n - start, BLOCK_PAIRS // max(1, start - low + 1)))
            while rows > 1 and rows * (start + rows - low) > BLOCK_PAIRS:
                rows //= 2
            stop = start + rows
            alike = self._likeness(range(start, stop), range(low, stop))
            r, c = np.nonzero(alike >= threshold)
            r, c = r + start, c + low
            keep = (c < r) & (self.source[r] != self.source[c]) & (self.hours[r] - self.hours[c] <= self.span)
            r, c = r[keep], c[keep]
            found.append(_nearest(r, c, alike[r - start, c - low]))
            start = stop
        return (
            np.concatenate([f[0] for f in found]),
            np.concatenate([f[1] for f in found]),
            np.concatenate([f[2] for f in found]),
        )

    def _likeness(self, rows: range, cols: range) -> NDArray[np.float32]:
        """The blend for a block of pairs; a pair with a story without a vector (the model could
        not run when it was stored) is judged by its words, put on the blend's scale."""
        import numpy as np

        word = self.bags.block(rows, cols)
        blend = self.vectors[rows.start : rows.stop] @ self.vectors[cols.start : cols.stop].T
        blend *= EMBEDDING_WEIGHT
        blend += (1 - EMBEDDING_WEIGHT) * word
        if self.every_story_has_a_vector:
            return blend
        both = self.has[rows.start : rows.stop, None] & self.has[None, cols.start : cols.stop]
        return np.where(both, blend, word / WORDS_ALONE)

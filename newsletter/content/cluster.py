"""Pure: which of the day's stories from different sources report the same event.

Two stories are alike by a blend of two cosines: of their sentence embeddings (all-MiniLM-L6-v2,
computed once per story when it is stored: it knows that "dies" and "passes away" say the same)
and of their TF-IDF word bags over the day's own stories (it knows that two stories name the
same rare place or person). Stories are joined, most alike first, into clusters:

- a pair starts a join when it is at least `threshold` alike;
- the two groups' stories must then be on average at least GROUP_SHARE x `threshold` alike;
- a cluster never holds two stories of one source, nor stories published more than MAX_SPAN
  apart (a follow-up with new facts, hours later, is a story of its own).

The method, the weights and the default threshold were chosen by pairwise precision and recall
on the labelled sets in tests/data/ (benchmarks/clustering.py prints them)."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "EMBEDDING_WEIGHT",
    "GROUP_SHARE",
    "MAX_SPAN",
    "WORDS_ALONE",
    "Clusterable",
    "clusters",
    "similarity",
    "words",
]

EMBEDDING_WEIGHT = 0.7  # the rest is the TF-IDF cosine
# Without vectors, a TF-IDF cosine of 0.55 x the threshold makes a pair (0.2 at the default 0.36:
# the best words alone measured on tests/data/, precision 0.95 and 1.0, recall 0.38 and 0.61).
WORDS_ALONE = 0.55
GROUP_SHARE = 0.7
MAX_SPAN = timedelta(hours=10)
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
    @property
    def when(self) -> datetime: ...


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


def _bags(stories: Sequence[Clusterable]) -> list[dict[str, float]]:
    """Unit-length TF-IDF vectors, the IDF taken over these stories; a word no other story has
    is left out (it adds nothing to any pair)."""
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
    out = []
    for bag in bags:
        vec = {
            w: (1 + math.log(tf)) * math.log((n + 1) / (df[w] + 0.5))
            for w, tf in bag.items()
            if df[w] <= limit
        }
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        out.append({w: v / norm for w, v in vec.items() if df[w] > 1})
    return out


def _word_cosines(stories: Sequence[Clusterable]) -> NDArray[np.float64]:
    """The TF-IDF cosine of every pair, as an n x n matrix, summed word by word over the stories
    that share it (a day's words are mostly rare, so this is far less than n x vocabulary)."""
    import numpy as np

    n = len(stories)
    postings: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for i, bag in enumerate(_bags(stories)):
        for w, v in bag.items():
            postings[w][0].append(i)
            postings[w][1].append(v)
    cells: list[NDArray[np.int64]] = []
    values: list[NDArray[np.float64]] = []
    for ids, vs in postings.values():
        idx = np.asarray(ids, dtype=np.int64)
        val = np.asarray(vs, dtype=np.float64)
        cells.append((idx[:, None] * n + idx[None, :]).ravel())
        values.append(np.outer(val, val).ravel())
    if not cells:
        return np.zeros((n, n))
    total = np.bincount(np.concatenate(cells), weights=np.concatenate(values), minlength=n * n)
    return total.reshape(n, n).astype(np.float64)


def similarity(stories: Sequence[Clusterable], embeddings: NDArray[np.float32] | None) -> NDArray[np.float64]:
    """The blended likeness of every pair of stories (n x n); `embeddings` are unit rows, one a
    story (a zero row for a story without one), or None to go by words alone. Words alone are put
    on the blend's scale: the TF-IDF cosine divided by WORDS_ALONE."""
    import numpy as np

    word = _word_cosines(stories)
    if embeddings is None:
        return word / WORDS_ALONE
    meaning = (embeddings @ embeddings.T).astype("float64")
    blend = EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * word
    # a story without a vector (the model could not run when it was stored) is judged by its words
    has = np.linalg.norm(embeddings, axis=1) > 0
    return np.where(has[:, None] & has[None, :], blend, word / WORDS_ALONE)


def clusters(
    stories: Sequence[Clusterable],
    embeddings: NDArray[np.float32] | None,
    *,
    threshold: float,
    max_span: timedelta = MAX_SPAN,
) -> list[list[int]]:
    """Groups of indexes into `stories`, each group one event, every story in exactly one group,
    groups in the order of their first story."""
    import numpy as np

    n = len(stories)
    if n < 2:
        return [[i] for i in range(n)]
    sim = similarity(stories, embeddings)
    source_ids = {name: k for k, name in enumerate(dict.fromkeys(s.source for s in stories))}
    source = np.array([source_ids[s.source] for s in stories])
    hours = np.array([s.when.timestamp() / 3600 for s in stories])
    span = max_span.total_seconds() / 3600
    i, j = np.triu_indices(n, 1)
    alike = sim[i, j]
    keep = (alike >= threshold) & (source[i] != source[j]) & (np.abs(hours[i] - hours[j]) <= span)
    i, j, alike = i[keep], j[keep], alike[keep]
    order = np.lexsort((j, i, -alike))  # most alike first; ties in index order, so runs repeat

    group_of = list(range(n))
    members: dict[int, list[int]] = {k: [k] for k in range(n)}
    sources: dict[int, set[int]] = {k: {int(source[k])} for k in range(n)}
    first, last = hours.copy(), hours.copy()
    for k in order:
        a, b = group_of[i[k]], group_of[j[k]]
        if a == b or sources[a] & sources[b]:
            continue
        if max(last[a], last[b]) - min(first[a], first[b]) > span:
            continue
        if sim[np.ix_(members[a], members[b])].mean() < GROUP_SHARE * threshold:
            continue
        for x in members[b]:
            group_of[x] = a
        members[a] += members.pop(b)
        sources[a] |= sources.pop(b)
        first[a], last[a] = min(first[a], first[b]), max(last[a], last[b])
    return [sorted(m) for m in sorted(members.values(), key=min)]

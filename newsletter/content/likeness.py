"""Pure: what the clustering reads in a story's words, apart from its sentence vector.

- **Word bags**: TF-IDF over the day's own stories (a word the headline uses counts double), so
  two stories that name the same rare place or person are alike. Kept sparse: a row of (word,
  weight) per story and the postings of each word, so the likeness of a block of pairs is a sum
  over the words they share, never a stories x vocabulary matrix.
- **Headline names**: the capitalised words of a headline that the day's text writes as names
  (capitalised in mid-sentence more often than not). Two stories whose headlines both name
  someone or somewhere, and neither of which names anything the other one mentions ("quake in
  Peru" and "quake in Turkey", "the Fed holds" and "the ECB cuts"), tell different events,
  however alike their words and meaning are. Measured on tests/data/: benchmarks/clustering.py."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["Bags", "Reading", "Told", "day_names", "differ", "forget", "headline_names", "words"]

TITLE_WEIGHT = 2.0
# A word in more than this share of the day's stories says nothing about which event a story is.
COMMON_SHARE = 0.2
# Products of word weights summed at once by Bags.block: 4 M of them take about 100 MB.
BLOCK_ENTRIES = 4_000_000

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
# Capitalised in English, yet no one's name: a weekday or a month says nothing about the event.
_CALENDAR = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april may june
    july august september october november december""".split()
)
# a word, and before it the end of a sentence if there is one (then spaces, quotes or brackets):
# the capital of a sentence's first word is no sign of a name
_TOKEN = re.compile(r"([.!?:;|—–][\s\"'“”‘’(\[]*)?([^\W\d_]+(?:['’][^\W\d_]+)*)")
_TAG = re.compile(r"<[^>]*>")
# a run of capitalised words, 'of' or 'the' within it ("Bank of England")
_RUN = re.compile(r"C(?:j*C)+")
_JOINERS = frozenset(("of", "the", "and", "for", "de"))
_MARKS = re.compile(r"[\u0300-\u036f]")  # the accents NFKD splits off


class Told(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def bullets(self) -> tuple[str, ...]: ...


def words(text: str) -> list[str]:
    """Lower-case word stems without accents; numbers kept, the commonest English words dropped."""
    return [w for w in map(_word, _WORD.findall(_fold(text))) if w]


@functools.lru_cache(maxsize=1 << 16)
def _word(w: str) -> str:
    w = w.replace("’", "'").replace(".", "")
    if w.endswith("'s"):
        w = w[:-2]
    return "" if len(w) < 2 or w in _STOP else _stem(w)


def forget() -> None:
    """Empty the caches of words already read (each holds at most 65,536)."""
    _word.cache_clear()
    _name.cache_clear()


def _fold(text: str) -> str:
    """Lower case without accents ('Córdoba' is 'cordoba')."""
    text = text.lower()
    if text.isascii():
        return text
    return _MARKS.sub("", unicodedata.normalize("NFKD", text))


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


class Bags:
    """Unit-length TF-IDF vectors of the stories, the IDF taken over these stories; a word that
    only one story has, or that more than COMMON_SHARE of them have, is left out (it adds nothing
    to any pair, or nothing that tells events apart)."""

    def __init__(self, stories: Sequence[Told]) -> None:
        import numpy as np

        vocabulary: dict[str, int] = {}
        found: list[int] = []
        lengths: list[int] = []
        for s in stories:
            for text in (s.title, " ".join((s.summary, *s.bullets))):
                ids = [vocabulary.setdefault(w, len(vocabulary)) for w in words(text)]
                found += ids
                lengths.append(len(ids))
        n, size = len(stories), max(1, len(vocabulary))
        # one entry a (story, word): how often, a word of the headline twice
        weight = np.repeat(np.tile([TITLE_WEIGHT, 1.0], n), lengths)
        story = np.repeat(np.arange(n), np.add.reduceat(lengths, np.arange(0, 2 * n, 2)) if n else [])
        cells, where = np.unique(story * size + np.asarray(found, dtype=np.int64), return_inverse=True)
        tf = np.bincount(where, weights=weight, minlength=len(cells))
        story, word = cells // size, cells % size
        df = np.bincount(word, minlength=size)[word]
        idf = np.log((n + 1) / (df + 0.5))
        value = np.where(df <= max(2, int(n * COMMON_SHARE)), (1 + np.log(tf)) * idf, 0.0)
        norm = np.sqrt(np.bincount(story, weights=value * value, minlength=n))
        value = value / np.where(norm > 0, norm, 1.0)[story]
        shared = (df > 1) & (value > 0)
        # story by story (as np.unique sorts them), and each word's postings in story order: one
        # sorted key per posting finds a word's stories in a range of story numbers by one search
        self._n = n
        self._row_word, self._row_value = word[shared], value[shared].astype(np.float32)
        self._row_start = np.searchsorted(story[shared], np.arange(n + 1))
        by_word = np.argsort(self._row_word * n + story[shared], kind="stable")
        self._story = story[shared][by_word]
        self._values = self._row_value[by_word]
        self._keys = self._row_word[by_word] * n + self._story
        self.rows = [
            dict(zip(self._row_word[a:b].tolist(), self._row_value[a:b].tolist(), strict=True))
            for a, b in zip(self._row_start[:-1], self._row_start[1:], strict=True)
        ]

    def block(self, rows: range, cols: range) -> NDArray[np.float32]:
        """The cosines of stories `rows` with stories `cols`, as a dense len(rows) x len(cols)
        block: each row's words times the postings of each word in `cols`, BLOCK_ENTRIES
        products at most at a time (rows are split until they fit)."""
        import numpy as np

        lo, hi = self._row_start[rows.start], self._row_start[rows.stop]
        word, value = self._row_word[lo:hi], self._row_value[lo:hi]
        start = np.searchsorted(self._keys, word * self._n + cols.start)
        counts = np.searchsorted(self._keys, word * self._n + cols.stop) - start
        total = int(counts.sum())
        if total > BLOCK_ENTRIES and len(rows) > 1:
            half = rows.start + len(rows) // 2
            return np.vstack(
                [self.block(range(rows.start, half), cols), self.block(range(half, rows.stop), cols)]
            )
        out = np.zeros(len(rows) * len(cols), dtype=np.float64)
        if total:
            # every (row entry, posting in cols) pair, without a loop over words
            lengths = np.diff(self._row_start[rows.start : rows.stop + 1])
            row = np.repeat(np.repeat(np.arange(len(rows)), lengths), counts)
            at = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(total)
            cell = row * len(cols) + (self._story[at] - cols.start)
            out += np.bincount(cell, weights=np.repeat(value, counts) * self._values[at], minlength=out.size)
        return out.reshape(len(rows), len(cols)).astype(np.float32)


# a word of a text, after what ends the sentence before it ("" in mid-sentence: only there is a
# capital a sign of a name)
_Token = tuple[str, str]


def _tokens(text: str) -> list[_Token]:
    return _TOKEN.findall(". " + (_TAG.sub(" ", text) if "<" in text else text))


def _shouts(tokens: Sequence[_Token]) -> bool:
    """A headline in capitals ("TERROR AS QUAKE ROCKS CHILE"): its capitals say nothing."""
    return sum(w.isupper() for _, w in tokens if len(w) >= 4) >= 2


def _title_case(tokens: Sequence[_Token]) -> bool:
    """A Headline Written In Title Case: its capitals say nothing about which words are names."""
    long = [w for _, w in tokens if len(w) > 3]
    return bool(long) and sum(w[0].isupper() for w in long) >= 0.6 * len(long)


class Reading:
    """A story's words as the names check reads them: its headline's, then its summary's and
    bullets', each a list of words."""

    __slots__ = ("_mentions", "body", "title")

    def __init__(self, story: Told) -> None:
        self.title = _tokens(story.title)
        self.body = [_tokens(text) for text in (story.summary, *story.bullets) if text]
        self._mentions: frozenset[str] | None = None

    @property
    def mentions(self) -> frozenset[str]:
        """Every word of the story as a name would be compared with it, and the initials of each
        run of capitalised words ('European Central Bank' also mentions 'ecb')."""
        if self._mentions is None:
            self._mentions = _mentions(self)
        return self._mentions


def day_names(readings: Iterable[Reading]) -> frozenset[str]:
    """The words the day's stories write as names: capitalised in mid-sentence more often than
    they are written in lower case (so 'Rotterdam' and 'Fed', not 'Storm' if the day also writes
    'storm'). Headlines in title case or in capitals do not count."""
    upper: Counter[str] = Counter()
    lower: Counter[str] = Counter()
    for reading in readings:
        for tokens in reading.body if _title_case(reading.title) else (reading.title, *reading.body):
            shouting = _shouts(tokens)
            upper.update(
                w for end, w in tokens if not end and w[0].isupper() and not (shouting and w.isupper())
            )
            lower.update(w for _, w in tokens if not w[0].isupper())
    named: Counter[str] = Counter()
    for w, k in upper.items():
        named[_name(w)] += k
    for w, k in lower.items():
        named[_name(w)] -= k
    return frozenset(w for w, k in named.items() if k > 0 and w not in _STOP and w not in _CALENDAR)


@functools.lru_cache(maxsize=1 << 16)
def _name(word: str) -> str:
    w = _fold(word).replace("’", "'")
    return w[:-2] if w.endswith("'s") else w


def headline_names(reading: Reading, names: frozenset[str]) -> frozenset[str]:
    """The day's names that this story's headline writes with a capital."""
    shouting = _shouts(reading.title)
    return frozenset(
        _name(w)
        for _, w in reading.title
        if w[0].isupper() and not (shouting and w.isupper()) and _name(w) in names
    )


def _mentions(reading: Reading) -> frozenset[str]:
    out: set[str] = set()
    for tokens in (reading.title, *reading.body):
        out.update(_name(w) for _, w in tokens)
        kinds = "".join("C" if w[0].isupper() else "j" if w in _JOINERS else "w" for _, w in tokens)
        for run in _RUN.finditer(kinds):
            first = [tokens[k][1][0].lower() for k in range(run.start(), run.end()) if kinds[k] == "C"]
            out.update("".join(first[a:b]) for a in range(len(first)) for b in range(a + 2, len(first) + 1))
    return frozenset(out)


def differ(
    names_a: frozenset[str], mentioned_a: frozenset[str], names_b: frozenset[str], mentioned_b: frozenset[str]
) -> bool:
    """Two stories (or groups of them) whose headlines both name someone or somewhere, and neither
    mentions any name of the other's headlines."""
    if not names_a or not names_b:
        return False
    return not any(_found(x, mentioned_b) for x in names_a) and not any(
        _found(x, mentioned_a) for x in names_b
    )


def _found(name: str, mentioned: frozenset[str]) -> bool:
    """`name` among `mentioned`, or a word that shares its stem ('Peru' and 'Peruvian', 'Turkey'
    and 'Turkish'): at least four letters and six tenths of the shorter word in common."""
    if name in mentioned:
        return True
    for word in mentioned:
        if word[:4] != name[:4]:
            continue
        common = 0
        for x, y in zip(name, word, strict=False):
            if x != y:
                break
            common += 1
        if common >= 0.6 * min(len(name), len(word)):
            return True
    return False

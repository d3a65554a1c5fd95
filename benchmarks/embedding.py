"""Sentence vectors of stories (content/embed.py): the model's load in a fresh process, as each
`gather` and `build` pays it, and the time to embed a normal day's 200 new stories and 2,000.
The stories are made up, shaped like a feed's: a headline of 6-14 words and a summary of 0-60
(the labelled set's "title. summary" are 40 word pieces on average)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

WORDS = (
    "council approves budget after long debate over school funding and road repairs in the city "
    "researchers report new battery chemistry that charges faster while storms cut power across "
    "the coast regulators fine bank for failures in money laundering checks as shares fall sharply "
    "team signs striker on record transfer fee before the season opens with a derby against rivals "
    "minister resigns over leaked messages about hospital waiting lists and the opposition demands "
    "an inquiry while the outage at cloud provider takes down payments apps for several hours"
).split()

# Run in a fresh interpreter: what a `newsletter gather` pays before its first vector.
_LOAD = """
import json, resource, sys, time
start = time.perf_counter()
from newsletter.content import embed
imported = time.perf_counter()
embed._model()
loaded = time.perf_counter()
embed.embed(sys.argv[1:])
first = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps([imported - start, loaded - imported, first - loaded, rss]))
"""


def stories(n: int, seed: int = 7) -> list[str]:
    """n made-up story texts as story_text() makes them."""
    from newsletter.content.embed import story_text

    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        title = " ".join(rnd.choices(WORDS, k=rnd.randint(6, 14))).capitalize()
        summary = " ".join(rnd.choices(WORDS, k=rnd.choice((0, 20, 30, 40, 60))))
        out.append(story_text(title, summary.capitalize() + "." if summary else "", ()))
    return out


def measure() -> list[tuple[str, str, str, str]]:
    from newsletter.content.embed import embed

    day = stories(200)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, *day], capture_output=True, text=True, check=True, timeout=600
    )
    imported, loaded, first, rss = json.loads(done.stdout)
    rows = [
        (
            "sentence model: import + load, fresh process",
            f"{(imported + loaded) * 1000:,.0f} ms",
            "",
            f"import {imported * 1000:,.0f} ms, model {loaded * 1000:,.0f} ms; "
            f"then 200 stories {first:.1f} s; peak RSS {rss:,.0f} MB",
        )
    ]
    embed(day[:32])  # the session's first run allocates its buffers
    for n in (200, 2000):
        texts = stories(n, seed=n)
        start, cpu = time.perf_counter(), time.process_time()
        embed(texts)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append(
            (
                f"embed {n:,} stories (title. summary)",
                f"{seconds:,.1f} s",
                "",
                f"{seconds * 1000 / n:.1f} ms per story ({cpu * 1000 / n:.1f} ms of CPU), model loaded",
            )
        )
    return rows


if __name__ == "__main__":
    for row in measure():
        print(" | ".join(row))

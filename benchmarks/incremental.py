"""Benchmark: what never paying twice saves over the Python docs corpus.

Three ingests of the 497 ``.rst.txt`` files of the Python 3.11 documentation on the local
stack (default chunking, 512/64 tokens):

1. first ingest;
2. re-ingest after changing 10% of the files (one paragraph rewritten in each);
3. identical re-upload: every file is *unchanged* (same key, same ETag, same settings), so
   each group ends in ChunkAndEstimate before any chunking; its time is also given as a
   fraction of the first ingest (``identical_vs_first``).

For each: tokens billed, cost (USD), and cost as a fraction of a naive run (every chunk
embedded through the synchronous API at the standard price, every time), plus the same
over the whole sequence, which the mission wants at 0.30 or less. Also times the cache
lookup (distinct hashes per second, at ``LOOKUP_BATCH`` hashes per query) on the table the
run filled. Prints figures; asserts nothing.

Usage: ``python benchmarks/incremental.py [--fraction 0.1] [--limit N] [--json]``
(``--limit``: only the first N files, for a quick run).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine
from run import WORK, corpus, files

from batch_embedder.openai import pricing

MODEL = "text-embedding-3-small"


def edit(body: bytes, salt: str) -> bytes:
    """Rewrite one paragraph in the middle of the document."""
    paragraphs = body.decode("utf-8").split("\n\n")
    middle = len(paragraphs) // 2
    paragraphs[middle] = f"This paragraph was rewritten ({salt}) for the next release of the page."
    return "\n\n".join(paragraphs).encode()


def run(stack: Any, docs: list[tuple[str, bytes]]) -> dict[str, Any]:
    started = time.perf_counter()
    results = stack.ingest(docs, timeout=7200, interval=1.0)
    seconds = time.perf_counter() - started
    ok = [r.output for r in results if r.status == "SUCCEEDED"]
    chunk_tokens = sum(o["tokens"] for o in ok)
    naive = float(pricing.breakdown(MODEL, chunk_tokens).standard_usd)
    cost = sum(o["cost_usd"] for o in ok)
    return {
        "files": len(docs),
        "succeeded": len(ok),
        "chunks": sum(o["chunks"] for o in ok),
        "chunk_tokens": chunk_tokens,
        "tokens_billed": sum(o["billed_tokens"] for o in ok),
        "cache_hits": sum(o["cache_hits"] for o in ok),
        # Groups that ended before chunking anything (every upload unchanged).
        "groups_without_work": sum(1 for r in results if "CheckCache" not in r.states),
        "groups": len(results),
        "apis": sorted({o["api"] for o in ok}),
        "cost_usd": round(cost, 6),
        "naive_cost_usd": round(naive, 6),
        "fraction_of_naive": round(cost / naive, 4) if naive else 0.0,
        "seconds": round(seconds, 1),
    }


def lookup_speed(stack: Any) -> dict[str, Any]:
    from batch_embedder.db import cache
    from batch_embedder.db.connection import connect

    with connect(stack.database_url) as conn:
        hashes = [
            str(r[0]) for r in conn.execute("SELECT content_sha256 FROM batch_embedder.chunks")
        ]
        rows = len(hashes)
        probe = hashes + [f"{i:064x}" for i in range(len(hashes))]  # half hits, half misses
        random.Random(0).shuffle(probe)
        started = time.perf_counter()
        found = cache.cached_hashes(conn, probe, model=MODEL, dimensions=1536)
        seconds = time.perf_counter() - started
    return {
        "cache_rows": rows,
        "lookup_hashes": len(probe),
        "lookup_hits": len(found),
        "lookup_batch": cache.LOOKUP_BATCH,
        "lookup_hashes_per_s": round(len(probe) / seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of files edited")
    parser.add_argument("--limit", type=int, default=0, help="first N files only (0: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from batch_embedder_local.stack import LocalStack

    docs = files(corpus())
    if args.limit > 0:
        docs = docs[: args.limit]
    home = WORK / "incremental"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    rng = random.Random(42)
    edited = set(rng.sample(range(len(docs)), max(1, int(len(docs) * args.fraction))))
    changed = [(k, edit(b, "v2") if i in edited else b) for i, (k, b) in enumerate(docs)]
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "files_edited": len(edited),
    }
    with LocalStack(home, log_file=home / "lambda.log", persist=False) as stack:
        figures["first_ingest"] = run(stack, docs)
        figures["after_editing"] = run(stack, changed)
        figures["identical_reupload"] = run(stack, changed)
        figures.update(lookup_speed(stack))
    steps = [figures[k] for k in ("first_ingest", "after_editing", "identical_reupload")]
    total_cost = sum(s["cost_usd"] for s in steps)
    total_naive = sum(s["naive_cost_usd"] for s in steps)
    figures["identical_vs_first"] = round(
        figures["identical_reupload"]["seconds"] / max(figures["first_ingest"]["seconds"], 1e-9), 3
    )
    figures["sequence_cost_usd"] = round(total_cost, 6)
    figures["sequence_naive_cost_usd"] = round(total_naive, 6)
    figures["sequence_fraction_of_naive"] = round(total_cost / total_naive, 4)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

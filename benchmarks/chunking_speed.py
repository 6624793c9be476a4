"""How fast is chunk + estimate compared with tiktoken's own ``encode_ordinary``?

Usage::

    PYTHONPATH=layers/batch_embedder python benchmarks/chunking_speed.py [PATH ...] [--json]

Each PATH is a file or a folder (searched recursively for ``--ext`` files). Without PATHs the
corpus is the ``.py`` files of this Python's standard library (``sysconfig``'s ``stdlib``
path, under ``sys.base_prefix``), capped by ``--max-mb``.

Two shapes of the same corpus:

- **per file** (what ChunkAndEstimate does with a group): from each file's bytes, decode
  and normalise (``documents.extract_document``; a suffix it does not know is read as
  ``.txt``), chunk (``chunking.chunk_texts``: the next files are encoded on two threads
  while one is planned) and sum the exact token counts. Against ``encode_ordinary`` of
  each normalised text, one after the other on one thread.
- **one document**: the files joined by blank lines, normalised and chunked in one
  ``chunk_text`` call (segments encoded on two threads). Against ``encode_ordinary`` of
  the normalised document.

The two sides are run in alternation, ``--repeat`` rounds; MB/s come from the best round of
each, the ratio (``encode_ordinary`` seconds / chunk + estimate seconds, i.e. MB/s over
MB/s) is the median of the rounds' ratios, so that a load that comes and goes on a shared
machine weighs on both sides alike. The target of issue 10 is at least 0.8.
``encode_ordinary_batch`` on the same number of threads is printed too, as the ceiling of
what two threads of tiktoken do. MB are 10^6 bytes of UTF-8. ``--json`` prints the figures
as one JSON object instead of a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from batch_embedder import chunking
from batch_embedder.chunking import chunk_text
from batch_embedder.documents import SUPPORTED_EXTENSIONS, extract_document, normalize_text
from batch_embedder.tokenizer import get_encoding

THREADS = 2


def _files(paths: Iterable[Path], extensions: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in extensions
                    and "site-packages" not in p.parts
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"{path}: no such file or folder")
    return found


def _load(files: list[Path], max_bytes: int) -> list[tuple[str, bytes]]:
    """``(key, bytes)`` of the UTF-8 files, up to ``max_bytes`` in all."""
    loaded: list[tuple[str, bytes]] = []
    total = 0
    for path in files:
        try:
            data = path.read_bytes()
            data.decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not data.strip():
            continue
        suffix = path.suffix.lower()
        key = path.name if suffix in SUPPORTED_EXTENSIONS else f"{path.name}.txt"
        loaded.append((key, data))
        total += len(data) + 2
        if total >= max_bytes:
            break
    return loaded


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _paired(
    reference: Callable[[], object], measured: Callable[[], object], repeat: int
) -> tuple[float, float, float]:
    """Best seconds of ``reference`` and of ``measured``, run in alternation (so that both
    see the same load on a shared machine), and the median of the per-round ratios
    ``reference / measured``."""
    pairs = [(_timed(reference), _timed(measured)) for _ in range(repeat)]
    return (
        min(a for a, _ in pairs),
        min(b for _, b in pairs),
        statistics.median(a / b for a, b in pairs),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: stdlib)")
    parser.add_argument("--ext", default=".py,.txt,.md,.rst", help="extensions in folders")
    parser.add_argument("--max-mb", type=float, default=11.0, help="corpus cap in MB (10^6 B)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--overlap-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each side (alternated)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    extensions = tuple(e.strip().lower() for e in args.ext.split(",") if e.strip())
    paths = args.paths or [Path(sysconfig.get_paths()["stdlib"])]
    files = _load(_files(paths, extensions), int(args.max_mb * 1e6))
    if not files:
        raise SystemExit("no readable UTF-8 files found")
    enc = get_encoding()
    chunk_text("warm up the byte-length table", encoding=enc)
    size = {"max_tokens": args.max_tokens, "overlap_tokens": args.overlap_tokens}
    texts = [extract_document(key, data).text for key, data in files]
    joined_raw = "\n\n".join(data.decode("utf-8") for _, data in files)
    document = normalize_text(joined_raw)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    doc_megabytes = len(document.encode("utf-8")) / 1e6
    tokens = sum(len(enc.encode_ordinary(t)) for t in texts)
    stream = getattr(chunking, "chunk_texts", None)  # absent before issue 10's change
    totals: dict[str, int] = {}

    def per_file() -> None:
        decoded = (extract_document(key, data).text for key, data in files)
        if stream is not None:
            results = stream(decoded, encoding=enc, **size)
        else:
            results = (chunk_text(t, encoding=enc, **size) for t in decoded)
        chunks = [c for result in results for c in result]
        totals.update(chunks=len(chunks), tokens=sum(c.token_count for c in chunks))

    def one_document() -> None:
        chunks = chunk_text(normalize_text(joined_raw), encoding=enc, **size)
        totals.update(doc_chunks=len(chunks))

    encode_s, chunk_s, ratio = _paired(
        lambda: [enc.encode_ordinary(t) for t in texts], per_file, args.repeat
    )
    batch_s, _, batch_ratio = _paired(
        lambda: enc.encode_ordinary_batch(texts, num_threads=THREADS), per_file, args.repeat
    )
    doc_encode_s, doc_chunk_s, doc_ratio = _paired(
        lambda: enc.encode_ordinary(document), one_document, args.repeat
    )
    report = {
        "files": len(files),
        "megabytes": round(megabytes, 3),
        "tokens": tokens,
        "chunked_tokens": totals["tokens"],
        "chunks": totals["chunks"],
        "max_tokens": args.max_tokens,
        "overlap_tokens": args.overlap_tokens,
        "threads": THREADS,
        "per_file": {
            "encode_ordinary_mb_s": round(megabytes / encode_s, 2),
            "encode_ordinary_batch_mb_s": round(megabytes / batch_s, 2),
            "chunk_and_estimate_mb_s": round(megabytes / chunk_s, 2),
            "ratio": round(ratio, 3),
            "ratio_to_batch": round(batch_ratio, 3),
        },
        "one_document": {
            "megabytes": round(doc_megabytes, 3),
            "chunks": totals["doc_chunks"],
            "encode_ordinary_mb_s": round(doc_megabytes / doc_encode_s, 2),
            "chunk_and_estimate_mb_s": round(doc_megabytes / doc_chunk_s, 2),
            "ratio": round(doc_ratio, 3),
        },
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    pf, od = report["per_file"], report["one_document"]
    assert isinstance(pf, dict) and isinstance(od, dict)
    print(f"corpus:  {len(files)} files, {megabytes:.2f} MB normalised, {tokens:,} tokens")
    print(f"chunks:  {totals['chunks']:,} per file ({totals['tokens']:,} tokens), "
          f"{totals['doc_chunks']:,} as one document")  # fmt: skip
    print(f"{'':34} {'per file':>10} {'one document':>14}")
    print(f"{'encode_ordinary (1 thread) MB/s':34} {pf['encode_ordinary_mb_s']:>10.2f} "
          f"{od['encode_ordinary_mb_s']:>14.2f}")  # fmt: skip
    print(f"{'encode_ordinary_batch (2) MB/s':34} {pf['encode_ordinary_batch_mb_s']:>10.2f}")
    print(f"{'decode+normalise+chunk MB/s':34} {pf['chunk_and_estimate_mb_s']:>10.2f} "
          f"{od['chunk_and_estimate_mb_s']:>14.2f}")  # fmt: skip
    print(f"{'ratio to encode_ordinary':34} {pf['ratio']:>10.2f} {od['ratio']:>14.2f}"
          "   (target >= 0.8)")  # fmt: skip
    print(f"{'ratio to encode_ordinary_batch':34} {pf['ratio_to_batch']:>10.2f}")
    print(f"cpus: {os.cpu_count()}, load average: {report['load_average']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

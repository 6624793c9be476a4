"""How fast is ``chunk_text`` compared with tiktoken's own ``encode_ordinary``?

Usage::

    PYTHONPATH=layers/batch_embedder python benchmarks/chunking_speed.py [PATH ...]

Each PATH is a file or a folder (searched recursively for ``--ext`` files). Without PATHs the
corpus is the ``.py`` files of this Python's standard library (``sysconfig``'s ``stdlib``
path, under ``sys.base_prefix``), capped by ``--max-mb``. The files are joined by blank lines
into one document (or chunked one by one with ``--per-file``). Prints the size (MB, 10^6
bytes of UTF-8), the tokens, the MB/s of ``encode_ordinary`` and of ``chunk_text`` (best of
``--repeat`` runs) and their ratio. The target is a ratio of at least 0.5.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from batch_embedder.chunking import chunk_text
from batch_embedder.tokenizer import get_encoding


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


def _load(files: list[Path], max_bytes: int) -> list[str]:
    texts: list[str] = []
    total = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text.encode("utf-8")) + 2
        if total >= max_bytes:
            break
    return texts


def _best(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: stdlib)")
    parser.add_argument("--ext", default=".py,.txt,.md,.rst", help="extensions in folders")
    parser.add_argument("--max-mb", type=float, default=11.0, help="corpus cap in MB (10^6 B)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--overlap-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one counts")
    parser.add_argument("--per-file", action="store_true", help="one chunk_text call per file")
    args = parser.parse_args(argv)

    extensions = tuple(e.strip().lower() for e in args.ext.split(",") if e.strip())
    paths = args.paths or [Path(sysconfig.get_paths()["stdlib"])]
    texts = _load(_files(paths, extensions), int(args.max_mb * 1e6))
    if not texts:
        raise SystemExit("no readable UTF-8 files found")
    documents = texts if args.per_file else ["\n\n".join(texts)]
    megabytes = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    enc = get_encoding()
    chunk_text("warm up the byte-length table", encoding=enc)

    tokens = sum(len(enc.encode_ordinary(d)) for d in documents)
    encode_s = _best(lambda: [enc.encode_ordinary(d) for d in documents], args.repeat)
    chunks: list[int] = []

    def _chunk() -> None:
        chunks[:] = [
            len(
                chunk_text(
                    d, max_tokens=args.max_tokens, overlap_tokens=args.overlap_tokens, encoding=enc
                )
            )
            for d in documents
        ]

    chunk_s = _best(_chunk, args.repeat)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"corpus:          {len(texts)} files, {len(documents)} document(s), {megabytes:.2f} MB")
    print(f"tokens:          {tokens:,} (cl100k_base), {sum(chunks):,} chunks")
    print(f"encode_ordinary: {megabytes / encode_s:7.2f} MB/s ({encode_s:.3f} s)")
    print(f"chunk_text:      {megabytes / chunk_s:7.2f} MB/s ({chunk_s:.3f} s)")
    ratio = encode_s / chunk_s
    print(f"ratio:           {ratio:7.2f} (chunk_text MB/s / encode_ordinary MB/s; target >= 0.5)")
    print(f"cpus: {os.cpu_count()}, load average before the end: {load:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

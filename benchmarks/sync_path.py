"""The synchronous Embeddings path against the local OpenAI emulator, paced by the bucket.

``embed_sync`` embeds 20,000 real chunks (the Python 3.11 docs at 128 tokens, overlap 16;
the stdlib's ``.py`` files when the docs corpus is absent) with ``--workers`` threads, each
embedding its own slice, all sharing one DynamoDB token bucket item (moto in-process, each
DynamoDB request applied under a lock as the local stack does) set to the tier-1 reference
limits of text-embedding-3-small: 3,000 RPM and 1,000,000 TPM. The emulator enforces the
same limits itself over a 60-second sliding window, so any breach shows up as 429s.

Every bucket grant and every request the emulator accepted is timestamped, so the script
can print the most tokens and requests seen in any 60-second window. Read them with the
token bucket's own bound: a bucket of capacity C refilled at C per minute can grant at most
``level at the window's start + C`` in any minute, i.e. up to ``C + initial_fill * C`` in
the first minute (a fresh bucket starts full). The emulator's sliding window never lets
more than C through; what the bucket granted above that is what the server's
``x-ratelimit-remaining-*`` headers and 429s took back.

Prints figures, never asserts them; exits non-zero only when the vectors or the billed
tokens are wrong (or a worker failed). Expect a run of minutes: ~2.2M tokens at 1M TPM.

Usage: ``python benchmarks/sync_path.py [--workers 4] [--inputs-per-request 100]
[--chunks 20000] [--initial-fill 1.0] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import sysconfig
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import cpu_model

HERE = Path(__file__).resolve().parent
DOCS = HERE / ".corpus" / "usr/share/doc/python3.11/html/_sources"
MODEL = "text-embedding-3-small"
DIMENSIONS = 1536
TABLE = "usage-sync-bench"
RPM = 3000
TPM = 1_000_000
WINDOW = 60.0
PROGRESS_SECONDS = 10.0


def _documents() -> tuple[str, Iterator[tuple[str, bytes]]]:
    """``(corpus name, (key, bytes) of each document)``: the docs, else the stdlib."""
    if DOCS.is_dir():
        paths = sorted(DOCS.rglob("*.rst.txt"))
        return (
            f"Python 3.11 docs (_sources, {len(paths)} files)",
            ((p.relative_to(DOCS).as_posix(), p.read_bytes()) for p in paths),
        )
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    # decode_document knows .txt, not .py: the key only picks the format.
    return (
        f"stdlib .py files ({stdlib})",
        ((p.relative_to(stdlib).as_posix() + ".txt", p.read_bytes()) for p in paths),
    )


def load_rows(limit: int) -> tuple[str, list[tuple[str, int]]]:
    """``(corpus name, the first ``limit`` chunks as (text, token_count))``."""
    from batch_embedder.chunking import chunk_text
    from batch_embedder.documents import decode_document
    from batch_embedder.errors import BatchEmbedderError
    from batch_embedder.tokenizer import get_encoding

    enc = get_encoding()
    name, docs = _documents()
    rows: list[tuple[str, int]] = []
    for key, data in docs:
        try:
            text = decode_document(key, data)
        except BatchEmbedderError:
            continue  # e.g. a non-UTF-8 stdlib test file
        for chunk in chunk_text(text, max_tokens=128, overlap_tokens=16, encoding=enc):
            rows.append((chunk.text, chunk.token_count))
            if len(rows) >= limit:
                return name, rows
    return name, rows


def max_window(events: Sequence[tuple[float, int]], start_after: float = 0.0) -> tuple[int, int]:
    """Most ``(tokens, events)`` in any ``[t, t + 60 s)`` window starting at an event >= start.

    ``events`` are ``(seconds, tokens)`` sorted by time; a window's maximum always starts
    at an event, so only those starts are tried.
    """
    times = [t for t, _ in events]
    prefix = [0]
    for _, n in events:
        prefix.append(prefix[-1] + n)
    best_tokens = best_count = 0
    for i in range(bisect_left(times, start_after), len(events)):
        j = bisect_left(times, times[i] + WINDOW)
        best_tokens = max(best_tokens, prefix[j] - prefix[i])
        best_count = max(best_count, j - i)
    return best_tokens, best_count


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The benchmark; returns ``(figures, problems)`` (no problems: the run is correct)."""
    import moto
    import openai

    from batch_embedder.aws.levels import Acquire
    from batch_embedder.aws.rate_bucket import TokenBucket
    from batch_embedder.openai.batch_files import BatchLimits
    from batch_embedder.openai.sync_embed import SyncResult, embed_sync
    from batch_embedder_local.moto_tables import moto_table
    from batch_embedder_local.openai_server import EmulatorConfig, OpenAIEmulator
    from batch_embedder_local.openai_server.ratelimit import RateLimiter, RateLimitExceeded

    t = time.perf_counter()
    corpus, rows = load_rows(args.chunks)
    corpus_seconds = time.perf_counter() - t
    if len(rows) < args.chunks:
        print(f"note: the corpus gave only {len(rows)} chunks", file=sys.stderr)
    total_tokens = sum(n for _, n in rows)

    lock = threading.Lock()
    grants: list[tuple[float, int]] = []  # (monotonic seconds, tokens) per bucket grant
    accepted: list[tuple[float, int]] = []  # (monotonic seconds, tokens) per accepted call
    refused_at: list[float] = []  # monotonic seconds of each 429 for the limits
    conflicts = [0]

    class RecordingLimiter(RateLimiter):
        """The emulator's limiter, also recording every request it accepts."""

        def acquire(self, tokens: int, rpm: int, tpm: int) -> RateLimitExceeded | None:
            refused = super().acquire(tokens, rpm, tpm)
            with lock:
                if refused is None:
                    accepted.append((time.monotonic(), tokens))
                else:
                    refused_at.append(time.monotonic())
            return refused

    class RecordingBucket(TokenBucket):
        """The bucket, also recording every grant and every lost conditional write."""

        def try_acquire(self, tokens: int, requests: int = 1) -> Acquire:
            result = super().try_acquire(tokens, requests)
            with lock:
                conflicts[0] += result.conflicts
                if result.granted:
                    grants.append((time.monotonic(), tokens))
            return result

    emulator = OpenAIEmulator(EmulatorConfig(rpm_limit=RPM, tpm_limit=TPM))
    emulator.limiter = RecordingLimiter()
    scope = f"sync-bench-{time.time_ns()}"
    limits = BatchLimits(inputs_per_request=args.inputs_per_request)
    share = -(-len(rows) // args.workers)
    slices = [(i, min(i + share, len(rows))) for i in range(0, len(rows), share)]
    results: list[SyncResult | None] = [None] * len(slices)
    errors: list[str] = []

    with moto_table("UsageTable", TABLE):
        emulator.start()
        try:
            client = openai.OpenAI(api_key="bench", base_url=emulator.base_url, max_retries=0)
            client.embeddings.create(model=MODEL, input=["warm up"])  # outside the figures
            emulator.counters.reset()
            emulator.limiter.clear()
            accepted.clear()
            refused_at.clear()

            def work(k: int) -> None:
                first, end = slices[k]
                bucket = RecordingBucket(
                    table=TABLE, scope=scope, model=MODEL,
                    requests_per_minute=RPM, tokens_per_minute=TPM,
                    initial_fill=args.initial_fill,
                )  # fmt: skip
                try:
                    results[k] = embed_sync(
                        client, rows[first:end], model=MODEL, dimensions=None, bucket=bucket,
                        max_wait_seconds=args.max_wait, limits=limits,
                    )  # fmt: skip
                except Exception as exc:  # reported, and the exit code says so
                    errors.append(f"worker {k}: {type(exc).__name__}: {exc}")

            done = threading.Event()
            start = time.monotonic()

            def progress() -> None:
                while not done.wait(PROGRESS_SECONDS):
                    s = emulator.stats()
                    now = time.monotonic()
                    with lock:
                        recent = sum(n for at, n in accepted if at > now - WINDOW)
                    print(
                        f"[{now - start:6.1f} s] {s['embedding_inputs']:>6}/{len(rows)} chunks, "
                        f"{s['embedding_requests']} requests, {s['sync_billed_tokens']:,} tokens"
                        f", {recent:,} in the last 60 s, {s['rate_limited']} x 429",
                        file=sys.stderr,
                        flush=True,
                    )

            threads = [threading.Thread(target=work, args=(k,)) for k in range(len(slices))]
            reporter = threading.Thread(target=progress, daemon=True)
            reporter.start()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.monotonic() - start
            done.set()
            reporter.join()
            stats = emulator.stats()
        finally:
            emulator.stop()

    done_results = [r for r in results if r is not None]
    vectors = [v for r in done_results for v in r.vectors]
    billed = sum(r.billed_tokens for r in done_results)
    requests = sum(r.requests for r in done_results)
    grants.sort()
    accepted.sort()
    first_grant = grants[0][0] if grants else start
    grant_tokens, grant_requests = max_window(grants)
    late_tokens, late_requests = max_window(grants, first_grant + WINDOW)
    server_tokens, server_requests = max_window(accepted)
    fill = args.initial_fill
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"moto {moto.__version__}, openai {openai.__version__}"
        ),
        "corpus": corpus,
        "corpus_seconds": round(corpus_seconds, 1),
        "workers": args.workers,
        "inputs_per_request": args.inputs_per_request,
        "bucket": {"rpm": RPM, "tpm": TPM, "initial_fill": fill},
        "emulator_limits": {"rpm": RPM, "tpm": TPM, "window_seconds": WINDOW},
        "chunks": len(rows),
        "tokens": total_tokens,
        "requests": requests,
        "wall_seconds": round(wall, 2),
        "min_paced_seconds": round(max(0.0, total_tokens - fill * TPM) / TPM * 60, 1),
        "min_window_seconds": (-(-total_tokens // TPM) - 1) * WINDOW,
        "embeddings_per_second": round(len(vectors) / wall, 1),
        "requests_per_second": round(requests / wall, 2),
        "tokens_per_minute": round(billed / wall * 60),
        "max_60s_accepted": {"tokens": server_tokens, "requests": server_requests},
        "max_60s_granted": {"tokens": grant_tokens, "requests": grant_requests},
        "max_60s_granted_after_first_minute": {
            "tokens": late_tokens,
            "requests": late_requests,
        },
        "granted_bound_first_minute": {
            "tokens": round(TPM * (1 + fill)),
            "requests": round(RPM * (1 + fill)),
        },
        "bucket_grants": len(grants),
        "rate_limited_429": stats["rate_limited"],
        "rate_limited_at_seconds": [round(at - start, 1) for at in sorted(refused_at)],
        "retries": sum(r.retries for r in done_results),
        "bucket_wait_seconds": round(sum(r.waited_seconds for r in done_results), 2),
        "dynamodb_conflicts": conflicts[0],
        "billed_tokens": billed,
        "emulator_billed_tokens": stats["sync_billed_tokens"],
        "vectors": len(vectors),
        "errors": errors,
    }
    problems = list(errors)
    if len(vectors) != len(rows):
        problems.append(f"{len(vectors)} vectors for {len(rows)} chunks")
    wrong = sum(1 for v in vectors if v.shape != (DIMENSIONS,))
    if wrong:
        problems.append(f"{wrong} vectors are not {DIMENSIONS}-dimensional")
    if not errors and billed != total_tokens:
        problems.append(f"billed {billed} tokens, the chunks hold {total_tokens}")
    if not errors and stats["sync_billed_tokens"] != total_tokens:
        problems.append(f"the emulator billed {stats['sync_billed_tokens']}, not {total_tokens}")
    return figures, problems


def render(f: dict[str, Any]) -> str:
    """The figures as text."""
    bound = f["granted_bound_first_minute"]
    fill = f["bucket"]["initial_fill"]
    lines = [
        f"date:        {f['date']}",
        f"machine:     {f['machine']}",
        f"corpus:      {f['corpus']}, 128-token chunks (overlap 16), read in "
        f"{f['corpus_seconds']} s",
        f"setup:       {f['workers']} workers, {f['inputs_per_request']} inputs per request, "
        f"bucket {f['bucket']['rpm']:,} RPM / {f['bucket']['tpm']:,} TPM in moto DynamoDB, "
        f"initial fill {fill:g}; emulator enforces the same limits over a 60 s sliding window",
        "",
        f"chunks:                 {f['chunks']:,}",
        f"tokens:                 {f['tokens']:,}",
        f"requests:               {f['requests']:,}",
        f"wall seconds:           {f['wall_seconds']:.1f}",
        f"  floor, bucket:        {f['min_paced_seconds']:.1f} s (tokens beyond the initial fill "
        f"at {f['bucket']['tpm']:,} per minute)",
        f"  floor, 60 s window:   {f['min_window_seconds']:.1f} s (no 60 s window may hold more "
        f"than {f['bucket']['tpm']:,} tokens: first to last accepted request)",
        f"embeddings/s:           {f['embeddings_per_second']:,.1f}",
        f"requests/s:             {f['requests_per_second']:.2f}",
        f"tokens/min overall:     {f['tokens_per_minute']:,}",
        "",
        "most in any 60 s window:",
        f"  accepted by emulator: {f['max_60s_accepted']['tokens']:,} tokens, "
        f"{f['max_60s_accepted']['requests']:,} requests (limit {f['bucket']['tpm']:,} / "
        f"{f['bucket']['rpm']:,}: a 429 is how a breach shows)",
        f"  granted by bucket:    {f['max_60s_granted']['tokens']:,} tokens, "
        f"{f['max_60s_granted']['requests']:,} grants (bound {bound['tokens']:,} / "
        f"{bound['requests']:,} = one minute's refill + initial fill {fill:g} x capacity; "
        "a grant whose request got a 429 is counted, and its retry is granted again)",
        f"  granted, windows starting >= 60 s after the first grant: "
        f"{f['max_60s_granted_after_first_minute']['tokens']:,} tokens, "
        f"{f['max_60s_granted_after_first_minute']['requests']:,} grants",
        "",
        f"429s from the emulator: {f['rate_limited_429']} (retries {f['retries']}; bucket grants "
        f"{f['bucket_grants']} for {f['requests']} requests)"
        + (
            f", at {', '.join(str(s) for s in f['rate_limited_at_seconds'])} s"
            if f["rate_limited_at_seconds"]
            else ""
        ),
        f"bucket waits:           {f['bucket_wait_seconds']:.1f} s summed over workers",
        f"DynamoDB conflicts:     {f['dynamodb_conflicts']} (conditional writes lost in "
        "try_acquire)",
        f"vectors:                {f['vectors']:,} x {DIMENSIONS}; billed {f['billed_tokens']:,} "
        f"tokens (emulator {f['emulator_billed_tokens']:,})",
    ]
    lines += [f"ERROR: {e}" for e in f["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks to embed")
    parser.add_argument("--workers", type=int, default=4, help="threads sharing the bucket")
    parser.add_argument(
        "--inputs-per-request", type=int, default=100, help="inputs per request (max 2048)"
    )
    parser.add_argument(
        "--initial-fill", type=float, default=1.0, help="fraction a fresh bucket starts with"
    )
    parser.add_argument(
        "--max-wait", type=float, default=600.0, help="longest single bucket wait, seconds"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.inputs_per_request <= 2048:
        parser.error("--inputs-per-request must be within 1..2048")
    if args.chunks < 1 or args.workers < 1:
        parser.error("--chunks and --workers must be positive")

    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        os.environ[name] = value

    figures, problems = run(args)
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

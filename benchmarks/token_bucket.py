"""Throughput of the DynamoDB token bucket: ``try_acquire`` calls per second, and conflicts.

Runs against moto's DynamoDB in this process (the usage table created from template.yaml),
with each DynamoDB request applied under one lock, as the local stack does (DynamoDB
applies each request atomically; moto alone does not). The bucket is large enough to grant
every call, so each call is one consistent read plus one conditional write, and a
conditional write that loses to another thread is a conflict (retried from the item the
failed write returns).

Prints figures, never asserts them. moto's figures measure the library's own work plus
moto's; real DynamoDB adds a network round trip per request (single-digit ms in-region)
and serialises writes to one item, so read these as a ceiling of the client side.

Usage: ``python benchmarks/token_bucket.py [--ops 2000] [--workers 1,16]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from datetime import UTC, datetime
from typing import Any

from common import cpu_model

from batch_embedder.aws.rate_bucket import TokenBucket
from batch_embedder_local.moto_tables import moto_table

TABLE = "usage-bench"


def run(workers: int, ops: int) -> tuple[float, int, int]:
    """``ops`` try_acquire calls shared by ``workers`` threads on one fresh bucket.

    Returns:
        ``(seconds, granted calls, conflicts)``.
    """
    scope = f"bench-{workers}-{time.monotonic_ns()}"
    buckets = [
        TokenBucket(
            table=TABLE,
            scope=scope,
            model="text-embedding-3-small",
            requests_per_minute=10**12,
            tokens_per_minute=10**15,
        )
        for _ in range(workers)
    ]
    buckets[0].try_acquire(0, requests=0)  # create the item outside the timing
    shares = [ops // workers + (1 if i < ops % workers else 0) for i in range(workers)]
    granted = [0] * workers
    conflicts = [0] * workers
    barrier = threading.Barrier(workers + 1)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(shares[i]):
            result = buckets[i].try_acquire(100)
            granted[i] += result.granted
            conflicts[i] += result.conflicts

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return seconds, sum(granted), sum(conflicts)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="try_acquire calls per run")
    parser.add_argument("--workers", default="1,16", help="thread counts, comma-separated")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]

    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        os.environ[name] = value
    import moto

    runs: list[dict[str, Any]] = []
    with moto_table("UsageTable", TABLE):
        run(1, 50)  # warm up boto3 and moto
        for workers in counts:
            seconds, granted, conflicts = run(workers, args.ops)
            runs.append(
                {
                    "threads": workers,
                    "ops_per_second": round(granted / seconds, 1),
                    "ms_per_op": round(1000 * seconds / args.ops, 3),
                    "granted": granted,
                    "conflicts": conflicts,
                    "conflicts_per_op": round(conflicts / args.ops, 3),
                }
            )
    figures = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, moto {moto.__version__} (in-process, "
        "request lock)",
        "ops": args.ops,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"date:    {figures['date']}")
    print(f"machine: {figures['machine']}")
    print(f"ops:     {args.ops} try_acquire calls per run, bucket never empty\n")
    print(f"{'threads':>7}  {'ops/s':>8}  {'ms/op':>6}  {'granted':>7}  {'conflicts':>9}  per op")
    for r in runs:
        print(
            f"{r['threads']:>7}  {r['ops_per_second']:>8.0f}  {r['ms_per_op']:>6.2f}  "
            f"{r['granted']:>7}  {r['conflicts']:>9}  {r['conflicts_per_op']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

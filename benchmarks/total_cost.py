"""Benchmark: the whole bill (OpenAI + AWS) of grouped uploads, against a naive script.

Runs on the local stack (real ASL and handlers, moto, embedded Postgres, emulator), uploading
files one by one as a user would; the local pipe groups them as the EventBridge Pipe does.
Every AWS request is counted, not estimated: the handlers' meters (botocore hooks on their
clients: S3, DynamoDB capacity units, Secrets Manager, SQS), each Lambda invocation's
GB-seconds (configured memory x measured duration), the Standard state transitions from
the execution history, and the local pipe's own SQS/Pipes requests. Prices are the list
prices in ``batch_embedder/aws_pricing.py`` (with their sources).

Scenarios:

- ``small``: 500 documents of about 80 tokens, uploaded one by one in one window;
- ``pages``: 100 documents of about 5,000 tokens;
- ``mixed``: 200 small and 40 page-sized documents.

Batch latency: the wait is a task token, so a group waiting 1 h or 24 h makes no
transition and runs no Lambda. The only cost that grows with latency is the reconciler
(every ``ReconcileMinutes``, 15 by default), which runs whatever the traffic: one run is
measured here while the batch is open, and charged in full to the corpus at
``latency / ReconcileMinutes`` runs (a deployment with other traffic shares it).

Naive: every chunk through the synchronous API at the standard price, no cache, no AWS.

Usage: ``python benchmarks/total_cost.py [--scenario small pages mixed] [--json]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from batch_embedder.aws.metering import AwsUsage

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "python-tutorial"
LATENCIES_HOURS = (0.0, 1.0, 24.0)
RECONCILE_MINUTES = 15
MAX_INPUTS_PER_BATCH = 50_000


def small_doc(i: int, salt: str) -> bytes:
    """About 80 cl100k tokens of unique text."""
    return (
        f"Note {i} ({salt}): the quarterly report for region {i % 7} lists {i * 13} orders, "
        f"{i % 5} returns, {i % 11} open tickets and a customer satisfaction score of "
        f"{50 + i % 50}. The warehouse in sector {i % 9} shipped {i * 3 % 97} pallets and "
        f"flagged {i % 4} late deliveries for the account team to follow up."
    ).encode()


def page_doc(i: int, salt: str, text: str) -> bytes:
    """About 5,000 tokens of real prose (the tutorial), unique in every chunk: no cache hit
    between documents (the cache would only make ours cheaper)."""
    words = text.split()
    start = (i * 977) % max(1, len(words) - 2600)
    body = words[start : start + 2600]
    lines = [" ".join(body[j : j + 60]) + f" [{salt}-{i}-{j}]" for j in range(0, len(body), 60)]
    return (f"Page {i} ({salt})\n\n" + "\n".join(lines)).encode()


def corpus(scenario: str, salt: str) -> list[tuple[str, bytes]]:
    """The scenario's ``(key, bytes)`` files."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(SAMPLES.glob("*.txt")))
    small = [(f"{scenario}/notes/{i:04d}.txt", small_doc(i, salt)) for i in range(500)]
    pages = [(f"{scenario}/pages/{i:04d}.txt", page_doc(i, salt, text)) for i in range(100)]
    if scenario == "small":
        return small
    if scenario == "pages":
        return pages
    return small[:200] + pages[:40]


def measure_reconcile(stack: Any) -> AwsUsage:
    """One reconciler run while a batch is open (webhooks off, a slow batch)."""
    emulator = stack.emulator
    before = emulator.config.model_dump()
    emulator.update_config(webhook_drop=True, batch_in_progress_seconds=5)
    try:
        salt = uuid.uuid4().hex[:8]
        events = [stack.upload(f"reconcile/{salt}.txt", small_doc(0, salt))]
        key = events[0]["detail"]["object"]["key"]
        wanted = {(key, events[0]["detail"]["object"]["sequencer"])}
        deadline = time.monotonic() + 120
        while (groups := stack.pipe.groups_for(wanted)) is None or not any(
            "WaitForBatches" in stack.current_state(g.execution_arn) for g in groups
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the reconcile probe did not reach WaitForBatches")
            time.sleep(0.2)
        result = stack.reconcile()
        usage = AwsUsage.model_validate(result.get("aws", {}))
        arn = groups[0].execution_arn
        while stack.status(arn) == "RUNNING" and time.monotonic() < deadline:
            time.sleep(1)
            stack.reconcile()  # the batch finishes: the reconciler ends the wait
        return usage
    finally:
        emulator.update_config(**before)


def run(scenario: str) -> dict[str, Any]:
    """Ingest the scenario on a fresh local stack; return its figures."""
    from batch_embedder_local.stack import LocalStack

    salt = uuid.uuid4().hex[:8]
    files = corpus(scenario, salt)
    with tempfile.TemporaryDirectory(prefix="batch-embedder-cost-") as tmp:
        home = Path(tmp)
        params = {"UploadBatchWindowSeconds": "60"}  # the default: one window for the corpus
        with LocalStack(home, log_file=home / "lambda.log", persist=False, parameters=params,
                        reconcile_seconds=0) as stack:  # fmt: skip
            started = time.monotonic()
            results = stack.ingest(files, timeout=3600)
            seconds = time.monotonic() - started
            assert stack.pipe is not None
            pipe_usage = stack.pipe.usage
            reconcile_run = measure_reconcile(stack)
    failed = [r for r in results if r.status != "SUCCEEDED"]
    outputs = [r.output for r in results]
    # Counted inside the executions, less the queue requests RecordCost models (the local
    # pipe counted the real ones, taken instead).
    in_executions = AwsUsage()
    for out in outputs:
        usage = AwsUsage.model_validate(out["aws"])
        in_executions = in_executions + usage.model_copy(
            update={"sqs_requests": 0, "pipes_requests": 0}
        )
    aws_usage = in_executions + pipe_usage
    documents = sum(out["documents"] for out in outputs)
    chunks = sum(out["chunks"] for out in outputs)
    openai = sum(out["cost_usd"] for out in outputs)
    naive = sum(out["naive_cost_usd"] for out in outputs)
    aws = aws_usage.cost_usd()
    by_latency = {}
    for hours in LATENCIES_HOURS:
        runs = math.ceil(hours * 60 / RECONCILE_MINUTES)
        aws_l = aws + runs * reconcile_run.cost_usd()
        by_latency[f"{hours:g}h"] = {
            "reconciler_runs": runs,
            "aws_cost_usd": round(aws_l, 9),
            "aws_cost_per_document_usd": round(aws_l / max(1, documents), 12),
            "total_cost_usd": round(openai + aws_l, 9),
            "total_vs_naive": round((openai + aws_l) / naive, 4) if naive else None,
        }
    batches = sum(out["batches"] for out in outputs)
    return {
        "scenario": scenario,
        "files": len(files),
        "documents": documents,
        "failed_executions": len(failed),
        "executions": len(results),
        "batches": batches,
        "chunks": chunks,
        "batches_allowed": max(1, math.ceil(chunks / MAX_INPUTS_PER_BATCH)),
        "billed_tokens": sum(out["billed_tokens"] for out in outputs),
        "openai_cost_usd": round(openai, 9),
        "naive_cost_usd": round(naive, 9),
        "openai_vs_naive": round(openai / naive, 4) if naive else None,
        "aws_usage": aws_usage.model_dump(),
        "aws_breakdown_usd": aws_usage.breakdown_usd(),
        "reconcile_run_usd": round(reconcile_run.cost_usd(), 9),
        "by_latency": by_latency,
        "seconds": round(seconds, 1),
    }


def main() -> int:
    """Run the scenarios and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", nargs="+", default=["small", "pages", "mixed"],
                        choices=["small", "pages", "mixed"])  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = [run(s) for s in args.scenario]
    report = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "scenarios": figures}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['machine']}; {report['date']}")
    header = (f"{'scenario':<8} {'docs':>5} {'exec':>4} {'batch':>5} {'openai/naive':>12} "
              f"{'latency':>7} {'aws $/doc':>12} {'total/naive':>11}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for f in figures:
        for latency, row in f["by_latency"].items():
            print(
                f"{f['scenario']:<8} {f['documents']:>5} {f['executions']:>4} {f['batches']:>5} "
                f"{f['openai_vs_naive']:>12} {latency:>7} "
                f"{row['aws_cost_per_document_usd']:>12.9f} {row['total_vs_naive']:>11}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

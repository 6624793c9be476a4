"""Benchmark: every token paid for once and counted once, whatever fails.

Runs the fault scenarios of ``tests/integration/test_exactly_once.py`` on one local stack
(real ASL and handlers, moto, embedded Postgres, the emulator): a Lambda that dies after its
work, 429s and 5xx, a tight TPM, failed / expired / cancelled batches with and without the
synchronous fallback, failed lines then the same file again, OpenAI unreachable, aborted
executions, a revoked key. For each scenario, as deltas over the scenario:

- ``billed``: tokens the emulator billed (its counters: sync + batch);
- ``committed``: DynamoDB's committed tokens of the model's daily budget;
- ``ledger``: tokens in the ledger records of the scenario's executions;
- ``re-paid``: ``repaid_tokens`` summed over the scenario's jobs in
  ``batch_embedder.purchases`` (Postgres): tokens bought again for content already bought;
- ``outcome``: each execution's final status, in order (the failed or last state in brackets).

``check``: ``ok`` when billed == committed == ledger, else ``MISMATCH``. Asserts nothing.

Usage: ``python benchmarks/faults.py [--scenario NAME]... [--json]`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boto3
from common import machine

from batch_embedder.aws import budget
from batch_embedder.aws.ledger import ledger_store

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "python-tutorial"
MODEL = "text-embedding-3-small"
#: Every Task that can crash after its side effect.
TASKS = ["ChunkAndEstimateFunction", "CheckCacheFunction", "BudgetCheckFunction",
         "BuildAndUploadJsonlFunction", "CreateBatchFunction", "WaitForBatchesFunction",
         "FetchAndWriteFunction", "RecordCostFunction"]  # fmt: skip
REPAID = "SELECT sum(repaid_tokens) FROM batch_embedder.purchases WHERE job_id = ANY(%s)"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def fresh(name: str, salt: str) -> bytes:
    """A sample document made unique (every chunk differs), so the cache cannot serve it."""
    text = (SAMPLES / name).read_text(encoding="utf-8")
    return "\n\n".join(f"[{salt}] {p}" for p in text.split("\n\n")).encode()


def until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout} s")


def job_of(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


def counter() -> dict[str, int]:
    return (
        budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
        .counter(budget.utc_day(), f"model:{MODEL}")
        .model_dump()
    )


def ledger_tokens(job_id: str) -> int | None:
    """Tokens of the job's ledger record of today (UTC); None when there is none."""
    record = ledger_store(os.environ["USAGE_TABLE"]).get(budget.utc_day(), job_id)
    return None if record is None else record.tokens


def planned_tokens(arn: str) -> int:
    """Tokens of the distinct contents the execution set out to buy (its embed manifest)."""
    body = boto3.client("s3").get_object(
        Bucket=os.environ["WORK_BUCKET"], Key=f"jobs/{job_of(arn)}/embed.jsonl"
    )["Body"]
    return sum(json.loads(line)["token_count"] for line in body.read().splitlines())


class Run:
    """One scenario: its stack, salt, executions and notes; env and emulator put back."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.emulator = stack.emulator
        self.salt = uuid.uuid4().hex[:8]
        self.arns: list[str] = []
        self.notes: list[str] = []

    def env(self, values: dict[str, str]) -> None:
        os.environ.update(values)

    def billed(self, since: dict[str, Any], kind: str = "billed_tokens") -> int:
        return int(self.emulator.stats()[kind] - since[kind])

    def start(self, key: str, body: bytes) -> str:
        arn = str(self.stack.start_execution([self.stack.upload(key, body, deliver=False)]))
        self.arns.append(arn)
        return arn

    def ingest(self, key: str, body: bytes, timeout: float = 300) -> Any:
        result = self.stack.ingest([(key, body)], timeout=timeout)[0]
        self.arns.append(result.execution_arn)
        return result

    def batches(self, arn: str) -> list[Any]:
        batches = self.emulator.batches.list_batches()
        return [b for b in batches if (b.metadata or {}).get("job_id") == job_of(arn)]

    def start_split(self, key: str, body: bytes, running: float = 20.0) -> str:
        """A group whose first batch runs (``running`` s) while the rest waits for room in
        the queue."""
        cap = {"BATCH_ENQUEUED_TOKEN_CAP": "2500", "BATCH_QUEUE_FULL_WAIT_SECONDS": "30"}
        self.env({"BATCH_INPUTS_PER_REQUEST": "4", **cap})
        self.emulator.update_config(batch_in_progress_seconds=running)
        arn = self.start(key, body)
        until(lambda: self.stack.current_state(arn) == "WaitForBatchQueue", what="queue wait")
        return arn


# -- the scenarios --------------------------------------------------------------------------
def crash_after_every_task(r: Run) -> None:
    calls_before = len(r.stack.adapter.invocations)
    for task in TASKS:
        r.stack.adapter.crash_after(task)
    r.ingest(f"crash-{r.salt}/errors.rst.txt", fresh("errors.rst.txt", r.salt))
    calls = [name for name, _, _ in r.stack.adapter.invocations[calls_before:]]
    again = [t.removesuffix("Function") for t in TASKS if calls.count(t) >= 2]
    r.notes.append(f"{len(again)} of {len(TASKS)} Tasks crashed and ran again")


def crash_after_sync(r: Run) -> None:
    r.env({"SYNC_PREFIXES": f"urgent-{r.salt}/", "BATCH_INPUTS_PER_REQUEST": "2"})
    r.stack.adapter.crash_after("EmbedSyncFunction")
    r.stack.adapter.crash_after("FetchAndWriteFunction")
    r.ingest(f"urgent-{r.salt}/errors.rst.txt", fresh("errors.rst.txt", r.salt))


def sync_429_5xx(r: Run) -> None:
    r.env({"SYNC_PREFIXES": f"flaky-{r.salt}/", "BATCH_INPUTS_PER_REQUEST": "2"})
    before = r.emulator.stats()
    faults = {"error_rate_429": 0.5, "error_rate_5xx": 0.1, "retry_after_seconds": 0.05}
    r.emulator.update_config(**faults, error_seed=7)
    r.ingest(f"flaky-{r.salt}/errors.rst.txt", fresh("errors.rst.txt", r.salt))
    refused = r.billed(before, "rate_limited"), r.billed(before, "server_errors")
    r.notes.append(f"{refused[0]} 429s and {refused[1]} 5xx answered and retried")


def tight_tpm(r: Run) -> None:
    r.env({"SYNC_PREFIXES": f"tight-{r.salt}/", "BATCH_INPUTS_PER_REQUEST": "4"})
    r.env({"EMBEDDINGS_TOKENS_PER_MINUTE": "1200", "RATE_LIMIT_MAX_WAIT_SECONDS": "1"})
    os.environ["OPENAI_RATE_LIMIT_SCOPE"] = f"tight-{r.salt}"
    body = fresh("appetite.rst.txt", r.salt) + fresh("whatnow.rst.txt", r.salt)
    calls_before = len(r.stack.adapter.invocations)
    result = r.ingest(f"tight-{r.salt}/appetite.rst.txt", body)
    calls = [c for c in r.stack.adapter.invocations[calls_before:] if c[0] == "EmbedSyncFunction"]
    r.notes.append(f"{result.output.get('tokens')} tokens paced over {len(calls)} EmbedSync calls")


def batch_outcome(outcome: str, fallback: bool) -> Callable[[Run], None]:
    def scenario(r: Run) -> None:
        r.env({"BATCH_INPUTS_PER_REQUEST": "2", "SYNC_FALLBACK": str(fallback).lower()})
        r.emulator.update_config(batch_outcome=outcome, batch_in_progress_seconds=0.5)
        key = f"{outcome}-{fallback}-{r.salt}/errors.rst.txt"
        arn = r.start(key, fresh("errors.rst.txt", r.salt))
        until(lambda: r.batches(arn), what="the first batch")  # only it misbehaves
        r.emulator.update_config(batch_outcome="completed")
        states = r.stack.wait({arn: key}, timeout=300)[0].states
        r.notes.append(f"CreateBatch x{states.count('CreateBatch')}, EmbedSync x"
                       f"{states.count('EmbedSync')}")  # fmt: skip

    return scenario


def failed_line_then_reupload(r: Run) -> None:
    r.env({"BATCH_INPUTS_PER_REQUEST": "2", "SYNC_FALLBACK": "false"})
    r.emulator.update_config(fail_custom_id_pattern=r":0-2$")  # the first line, every round
    key, body = f"line-{r.salt}/errors.rst.txt", fresh("errors.rst.txt", r.salt)
    before = r.emulator.stats()
    first = r.ingest(key, body)
    billed_first = r.billed(before)
    r.emulator.update_config(fail_custom_id_pattern=None)
    again = r.emulator.stats()
    r.ingest(key, body)
    planned = planned_tokens(first.execution_arn)
    r.notes.append(
        f"first run {billed_first} + re-upload {r.billed(again)} "
        f"(planned {planned}, missing {planned - billed_first})"
    )


def three_batch_first_fails(r: Run) -> None:
    r.env({"BATCH_INPUTS_PER_REQUEST": "4", "BATCH_ENQUEUED_TOKEN_CAP": "2500"})
    r.env({"BATCH_QUEUE_FULL_WAIT_SECONDS": "1", "SYNC_FALLBACK": "false"})
    r.emulator.update_config(batch_outcome="failed")
    key = f"three-{r.salt}/controlflow.rst.txt"
    arn = r.start(key, fresh("controlflow.rst.txt", r.salt))
    until(lambda: r.batches(arn), what="the first batch")
    r.emulator.update_config(batch_outcome="completed")
    r.stack.wait({arn: key}, timeout=300)
    statuses = sorted(b.status for b in r.batches(arn))
    r.notes.append(f"{len(statuses)} batches, {statuses.count('failed')} failed")


def outage_wait_and_fetch(r: Run) -> None:
    r.emulator.update_config(batch_in_progress_seconds=1.0)
    key = f"outage-{r.salt}/errors.rst.txt"
    before = r.emulator.stats()
    gate = r.stack.adapter.hold("FetchAndWriteFunction")
    try:
        arn = r.start(key, fresh("errors.rst.txt", r.salt))
        until(lambda: r.stack.current_state(arn) == "WaitForBatches", what="the wait")
        r.emulator.update_config(outage_seconds=3)  # the batch ends during the outage
        r.stack.reconcile()
        until(lambda: r.stack.current_state(arn) == "FetchAndWrite", what="the fetch")
        r.emulator.update_config(outage_seconds=6)  # and the fetch starts in another one
    finally:
        gate.set()
    r.stack.wait({arn: key}, timeout=300)
    r.notes.append(f"{r.billed(before, 'outage_refused')} requests refused by the outage")


def aborted_then_reconciler(r: Run) -> None:
    key, body = f"abort-{r.salt}/controlflow.rst.txt", fresh("controlflow.rst.txt", r.salt)
    before = r.emulator.stats()
    arn = r.start_split(key, body)
    r.stack.abort(arn)
    until(lambda: r.stack.status(arn) == "ABORTED", what="the abort")
    first = r.stack.reconcile()  # the owner is gone: its running batch is cancelled
    [batch] = r.batches(arn)
    until(lambda: r.emulator.batches.get(batch.id).status in TERMINAL, what="the cancellation")
    second = r.stack.reconcile()  # ... then ingested and settled
    billed_first = r.billed(before)
    r.emulator.update_config(batch_in_progress_seconds=0.5)
    r.env({"BATCH_ENQUEUED_TOKEN_CAP": "3000000"})
    again = r.emulator.stats()
    r.ingest(key, body)
    r.notes.append(
        f"reconciler cancelled {first.get('cancelled')}, adopted {second.get('adopted')}; "
        f"aborted run {billed_first} + re-upload {r.billed(again)} (planned {planned_tokens(arn)})"
    )


def aborted_then_sweep(r: Run) -> None:
    key = f"sweep-{r.salt}/controlflow.rst.txt"
    # The first batch completes but no webhook comes and no reconciler runs: the sweep is
    # the first to see it, after the execution was aborted.
    r.emulator.update_config(webhook_drop=True)
    arn = r.start_split(key, fresh("controlflow.rst.txt", r.salt), running=0.2)
    [batch] = r.batches(arn)
    until(lambda: r.emulator.batches.get(batch.id).status in TERMINAL, what="the batch")
    r.stack.abort(arn)
    until(lambda: r.stack.status(arn) == "ABORTED", what="the abort")
    later = (datetime.now(UTC) + timedelta(hours=27)).strftime("%Y-%m-%dT%H:%M:%SZ")
    swept = r.stack.sweep(at=later)  # past RESERVATION_HOLD_SECONDS
    released = job_of(arn) in swept.get("released_jobs", [])
    r.notes.append(
        f"the sweep settled the job: {released}; it committed {swept.get('committed_tokens')} "
        "tokens its completed batch had billed"
    )


def revoked_key(r: Run) -> None:
    r.emulator.update_config(api_key="sk-someone-else")  # the stack's key is now refused
    r.ingest(f"revoked-{r.salt}/errors.rst.txt", fresh("errors.rst.txt", r.salt), timeout=120)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "crash-after-every-task": crash_after_every_task,
    "crash-after-sync": crash_after_sync,
    "sync-429-5xx": sync_429_5xx,
    "tight-tpm": tight_tpm,
    **{
        f"batch-{o}-{'fallback' if f else 'no-fallback'}": batch_outcome(o, f)
        for o in ("failed", "expired", "cancelled")
        for f in (True, False)
    },
    "failed-line-then-reupload": failed_line_then_reupload,
    "three-batch-first-fails": three_batch_first_fails,
    "outage-wait-and-fetch": outage_wait_and_fetch,
    "aborted-then-reconciler": aborted_then_reconciler,
    "aborted-then-sweep": aborted_then_sweep,
    "revoked-key": revoked_key,
}


def run_scenario(stack: Any, db: Any, name: str) -> dict[str, Any]:
    """Run one scenario; measure the books over it; put env, emulator and faults back."""
    saved_env, saved_config = dict(os.environ), stack.emulator.config.model_dump()
    stats, committed = stack.emulator.stats(), counter()["committed_tokens"]
    r = Run(stack)
    started = time.monotonic()
    error = None
    try:
        SCENARIOS[name](r)
    except Exception as exc:  # report it in the row, go on with the next scenario
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        for arn in r.arns:
            if stack.status(arn) == "RUNNING":
                stack.abort(arn, cause="benchmark scenario error")
    finally:
        for task in [*TASKS, "EmbedSyncFunction"]:
            stack.adapter.crash_after(task, 0)
        stack.emulator.update_config(**saved_config)
        os.environ.clear()
        os.environ.update(saved_env)
    outcome = []
    for arn in r.arns:
        result = stack.result(arn, "")
        outcome.append(result.status + (f" [{result.failed_state}]" if result.failed_state else ""))
    jobs = [job_of(a) for a in r.arns]
    ledgers = {j: ledger_tokens(j) for j in jobs}
    repaid = db.execute(REPAID, (jobs,)).fetchone()[0] or 0
    end = stack.emulator.stats()
    row: dict[str, Any] = {
        "scenario": name,
        "billed": int(end["billed_tokens"] - stats["billed_tokens"]),
        "committed": int(counter()["committed_tokens"] - committed),
        "ledger": sum(v or 0 for v in ledgers.values()),
        "repaid": int(repaid),
        "outcome": " -> ".join(outcome) + (f" (error: {error})" if error else ""),
        "sync_billed": int(end["sync_billed_tokens"] - stats["sync_billed_tokens"]),
        "batch_billed": int(end["batch_billed_tokens"] - stats["batch_billed_tokens"]),
        "reserved_after": int(counter()["reserved_tokens"]),
        "files_left": int(end["files"] - stats["files"]),
        "jobs": jobs,
        "jobs_without_ledger": [j for j, v in ledgers.items() if v is None],
        "notes": r.notes,
        "seconds": round(time.monotonic() - started, 1),
    }
    row["check"] = "ok" if row["billed"] == row["committed"] == row["ledger"] else "MISMATCH"
    return row


def run(names: list[str]) -> list[dict[str, Any]]:
    """All ``names`` on one fresh local stack (1 s upload window, reconciler on demand)."""
    import psycopg

    from batch_embedder_local.stack import LocalStack

    rows = []
    with tempfile.TemporaryDirectory(prefix="batch-embedder-faults-") as tmp:
        home, params = Path(tmp), {"UploadBatchWindowSeconds": "1"}
        with LocalStack(home, log_file=home / "lambda.log", persist=False, parameters=params,
                        reconcile_seconds=0) as stack:  # fmt: skip
            db = psycopg.connect(stack.database_url, autocommit=True)
            for name in names:
                rows.append(run_scenario(stack, db, name))
                print(f"{name}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
            db.close()
    return rows


def main() -> int:
    """Run the scenarios and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="repeatable; default: all")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.scenario or list(SCENARIOS)
    report = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "scenarios": run(names)}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['machine']}; {report['date']}")
    header = (f"{'scenario':<28} {'billed':>7} {'committed':>9} {'ledger':>7} {'re-paid':>7} "
              f"{'check':<8} outcome")  # fmt: skip
    print(header)
    print("-" * len(header))
    for s in report["scenarios"]:
        print(
            f"{s['scenario']:<28} {s['billed']:>7} {s['committed']:>9} {s['ledger']:>7} "
            f"{s['repaid']:>7} {s['check']:<8} {s['outcome']}"
        )
    print()
    for s in report["scenarios"]:
        extra = [f"sync {s['sync_billed']} + batch {s['batch_billed']}", *s["notes"]]
        extra.append(f"{s['seconds']} s")
        if s["jobs_without_ledger"]:
            extra.append(f"no ledger record for {', '.join(s['jobs_without_ledger'])}")
        if s["reserved_after"] or s["files_left"]:
            extra.append(f"left over: {s['reserved_after']} reserved, {s['files_left']} files")
        print(f"{s['scenario']}: {'; '.join(extra)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Helpers of the money tests: what the emulator billed, what DynamoDB committed and what
the ledger says, for executions on the local stack (``tests/integration``)."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
import openai
import psycopg

from batch_embedder.aws import budget
from batch_embedder.aws.ledger import ledger_store
from batch_embedder.aws.limiters import batch_queue
from batch_embedder.aws.registry import BatchRegistry
from batch_embedder.settings import Settings
from batch_embedder_local.stack import LOCAL_API_KEY

MODEL = "text-embedding-3-small"


def counter() -> dict[str, int]:
    return (
        budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
        .counter(budget.utc_day(), f"model:{MODEL}")
        .model_dump()
    )


def job_of(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


def ledger_tokens(job_id: str) -> int:
    record = ledger_store(os.environ["USAGE_TABLE"]).get(budget.utc_day(), job_id)
    assert record is not None, f"no ledger record for {job_id}"
    return record.tokens


def job_batches(stack: Any, job_id: str) -> list[Any]:
    return [
        b
        for b in stack.emulator.batches.list_batches()
        if (b.metadata or {}).get("job_id") == job_id
    ]


class Books:
    """The emulator's bill and DynamoDB's committed tokens since the scenario started."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.stats = stack.emulator.stats()
        self.committed = counter()["committed_tokens"]

    def billed(self, kind: str = "billed_tokens") -> int:
        return int(self.stack.emulator.stats()[kind] - self.stats[kind])

    def check(self, db: psycopg.Connection[tuple[Any, ...]], *arns: str) -> int:
        """Assert the three invariants for the executions ``arns``; returns tokens billed."""
        jobs = [job_of(a) for a in arns]
        billed = self.billed()
        committed = counter()["committed_tokens"] - self.committed
        in_ledger = sum(ledger_tokens(j) for j in jobs)
        assert billed == committed == in_ledger, (billed, committed, in_ledger)
        repaid = db.execute(
            "SELECT coalesce(sum(repaid_tokens), 0) FROM batch_embedder.purchases "
            "WHERE job_id = ANY(%s)",
            (jobs,),
        ).fetchone()
        assert repaid is not None and repaid[0] == 0
        assert counter()["reserved_tokens"] == 0
        assert batch_queue(Settings(), MODEL).state().enqueued_tokens == 0
        claims = db.execute(
            "SELECT count(*) FROM batch_embedder.embedding_claims WHERE job_id = ANY(%s)", (jobs,)
        ).fetchone()
        assert claims is not None and claims[0] == 0
        still_open = [
            b.batch_id for b in BatchRegistry(os.environ["JOBS_TABLE"]).open_batches()
            if b.owner in jobs
        ]  # fmt: skip
        assert still_open == []
        # every input, output and error file deleted
        assert self.stack.emulator.stats()["files"] == self.stats["files"]
        return billed


def sdk(stack: Any) -> openai.OpenAI:
    """The official SDK, pointed at the stack's emulator with the stack's key."""
    return openai.OpenAI(api_key=LOCAL_API_KEY, base_url=stack.emulator.base_url)


def chunks_of(db: psycopg.Connection[tuple[Any, ...]], key: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM batch_embedder.chunks WHERE source_key = %s", (key,)
    ).fetchone()
    return int(row[0]) if row else 0


def paid_once(result: Any, books: Books) -> None:
    """Every distinct content of the group bought exactly once."""
    out = result.output
    assert out["billed_tokens"] == books.billed() == out["tokens"] - out["tokens_saved"]
    assert out["repaid_tokens"] == 0


def planned_tokens(arn: str) -> int:
    """Tokens of the distinct contents the execution set out to buy (its embed manifest)."""
    manifest = (
        boto3.client("s3")
        .get_object(Bucket=os.environ["WORK_BUCKET"], Key=f"jobs/{job_of(arn)}/embed.jsonl")["Body"]
        .read()
    )
    return sum(json.loads(line)["token_count"] for line in manifest.splitlines())


def embedded_once(
    result: Any, books: Books, db: psycopg.Connection[tuple[Any, ...]], key: str, arn: str = ""
) -> int:
    """The execution succeeded, wrote the whole document, bought each content once and
    kept the three invariants; returns the tokens billed."""
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    paid_once(result, books)
    assert chunks_of(db, key) == result.output["chunks"]
    return books.check(db, arn or result.execution_arn)


def reupload_buys_only_the_rest(
    stack: Any,
    db: psycopg.Connection[tuple[Any, ...]],
    key: str,
    body: bytes,
    billed_before: int,
    planned: int,
) -> int:
    """Upload ``body`` again: it succeeds and buys only what ``planned`` (the first
    execution's plan) less ``billed_before`` leaves; returns the tokens it billed."""
    again = Books(stack)
    [result] = stack.ingest([(key, body)], timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    assert again.billed() == result.output["billed_tokens"]
    assert billed_before + again.billed() == planned
    assert chunks_of(db, key) == result.output["chunks"]
    again.check(db, result.execution_arn)
    return again.billed()


def start(stack: Any, key: str, body: bytes) -> str:
    return str(stack.start_execution([stack.upload(key, body, deliver=False)]))

"""Helpers the tests share (imported as ``tests.utils``; fixtures stay in conftest)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

from batch_embedder.openai.pricing import cost_usd

#: The repository, and the sample pages the tests ingest.
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "python-tutorial"


def ledger(output: dict[str, Any]) -> dict[str, Any]:
    """The ledger record (usage table) of the execution whose output is ``output``."""
    table = boto3.resource("dynamodb").Table(os.environ["USAGE_TABLE"])
    item: dict[str, Any] = table.get_item(
        Key={"pk": f"ledger#{output['day']}", "sk": output["job_id"]}
    )["Item"]
    return item


def usd(tokens: int, per_million: Any) -> float:
    """What ``tokens`` cost at ``per_million`` USD, as the output and the ledger carry it."""
    return float(cost_usd(tokens, per_million))


def brief(result: dict[str, Any] | None) -> dict[str, Any]:
    """A document's result without its cost shares: key, status, chunks (and reason)."""
    assert result is not None, "no result for that document"
    return {k: result[k] for k in ("key", "status", "chunks", "reason") if k in result}


def wait_for_batch(client: Any, batch_id: str, timeout: float = 60, interval: float = 0.05) -> Any:
    """Retrieve the batch through the SDK until it is terminal (tests only: the product
    never polls a batch per group)."""
    import time

    from batch_embedder.steps.batch import TERMINAL

    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in TERMINAL:
        assert time.monotonic() < deadline, f"{batch_id} still {batch.status}"
        time.sleep(interval)
    return batch


def until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Call ``check`` every 0.1 s until it returns something truthy; return that.

    Raises:
        TimeoutError: not reached within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout} s")


def texts(db: Any, key: str) -> list[str]:
    """The stored chunk texts of the document ``key``, in chunk order."""
    rows = db.execute(
        "SELECT text FROM batch_embedder.chunks WHERE source_key = %s ORDER BY chunk_index",
        (key,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def fresh(name: str, salt: str) -> bytes:
    """A sample document made unique (every chunk differs), so the cache cannot serve it."""
    text = (SAMPLES / name).read_text(encoding="utf-8")
    return "\n\n".join(f"[{salt}] {p}" for p in text.split("\n\n")).encode()

"""Replay a given sequence of S3 events on the local stack: reproduce an ordering problem.

``batch-embedder local replay EVENTS.jsonl`` runs one step per line, in file order. A
``put`` / ``delete`` writes to the documents bucket (so S3's sequencer follows the file)
and starts the workflow with its event as a group of its own, unless ``"hold": true``:
then a later ``{"op": "deliver", "ref": N}`` (N: the 1-based step) delivers it late;
``deliver`` also sends duplicates. It reports, per key, what each delivery did (embedded,
superseded, deleted...), the rows left in ``batch_embedder.chunks`` and what S3 holds.

Example EVENTS.jsonl (blank lines are skipped; step N is the N-th step)::

    {"op": "put", "key": "a.txt", "text": "version 1", "hold": true}
    {"op": "put", "key": "a.txt", "text": "version 2"}
    {"op": "deliver", "ref": 1}
    {"op": "put", "key": "b.txt", "file": "docs/b.txt"}
    {"op": "delete", "key": "b.txt"}

Version 1's event arrives after version 2's: it must report ``superseded`` and ``a.txt``
keep version 2's rows. ``file`` is relative to the EVENTS.jsonl folder; ``b64`` gives
bytes in base64. ``concurrent=True`` starts every execution without waiting for any.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import boto3
from botocore.exceptions import ClientError

from .stack import REGION, ExecutionResult, LocalStack

_FIELDS = {
    "put": {"op", "key", "text", "file", "b64", "hold"},
    "delete": {"op", "key", "hold"},
    "deliver": {"op", "ref"},
}


class ReplayError(ValueError):
    """EVENTS.jsonl is not a valid replay (the message names the line)."""


@dataclass(frozen=True)
class Step:
    """One line of EVENTS.jsonl; a ``deliver`` carries the key and op of its ``ref``."""

    number: int
    line: int
    op: str
    key: str
    body: bytes | None = None
    hold: bool = False
    ref: int | None = None


def parse_steps(
    lines: Iterable[str], base: Path = Path(), source: str = "EVENTS.jsonl"
) -> list[Step]:
    """The steps of an EVENTS.jsonl text; ``file`` bodies are read relative to ``base``.

    Raises:
        ReplayError: a line is not a valid step (``SOURCE line N: why``).
    """
    steps: list[Step] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{source} line {lineno}"
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ReplayError(f"{where}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ReplayError(f"{where}: a step is a JSON object, not {type(obj).__name__}")
        op = obj.get("op")
        if op not in _FIELDS:
            raise ReplayError(f"{where}: unknown op {op!r} (expected put, delete or deliver)")
        if unknown := sorted(set(obj) - _FIELDS[op]):
            raise ReplayError(f"{where}: {op} takes no {', '.join(unknown)}")
        hold = obj.get("hold", False)
        if not isinstance(hold, bool):
            raise ReplayError(f"{where}: hold is true or false, not {hold!r}")
        number = len(steps) + 1
        if op == "deliver":
            ref = obj.get("ref")
            if not isinstance(ref, int) or isinstance(ref, bool) or not 1 <= ref < number:
                raise ReplayError(f"{where}: ref {ref!r} is not the number of an earlier step")
            ref = steps[ref - 1].ref or ref  # a deliver of a deliver: the same event
            steps.append(Step(number, lineno, "deliver", steps[ref - 1].key, ref=ref))
            continue
        key = obj.get("key")
        if not isinstance(key, str) or not key:
            raise ReplayError(f"{where}: {op} needs a non-empty string key")
        body = _body(obj, base, where) if op == "put" else None
        steps.append(Step(number, lineno, op, key, body=body, hold=hold))
    return steps


def _body(obj: dict[str, Any], base: Path, where: str) -> bytes:
    given = [name for name in ("text", "file", "b64") if name in obj]
    if len(given) != 1:
        raise ReplayError(f"{where}: a put needs exactly one of text, file or b64")
    value = obj[given[0]]
    if not isinstance(value, str):
        raise ReplayError(f"{where}: {given[0]} must be a string")
    if given[0] == "text":
        return value.encode()
    if given[0] == "b64":
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:  # binascii.Error
            raise ReplayError(f"{where}: b64 is not base64 ({exc})") from None
    path = base / value
    if not path.is_file():
        raise ReplayError(f"{where}: file {value!r}: no such file in {base}")
    return path.read_bytes()


def load_steps(path: Path) -> list[Step]:
    """The steps of the EVENTS.jsonl file at ``path`` (see :func:`parse_steps`)."""
    return parse_steps(path.read_text("utf-8").splitlines(), base=path.parent, source=str(path))


def replay(
    stack: LocalStack, steps: list[Step], *, concurrent: bool = False, timeout: float = 600
) -> dict[str, Any]:
    """Run ``steps`` on ``stack``; returns ``{"keys": [...], "totals": {...}}``.

    Each per-key entry lists its events (one per delivery, in delivery order, and one per
    held event never delivered), its ``rows`` now in pgvector and ``current`` (S3).

    Raises:
        ReplayError: a key is under ``BulkPrefix`` (no event rule delivers those).
        TimeoutError: executions still running after ``timeout`` seconds.
    """
    started, deadline = time.monotonic(), time.monotonic() + timeout
    billed_before = stack.emulator.stats()["billed_tokens"] if stack.emulator else 0
    events: dict[int, dict[str, Any]] = {}  # step number -> the event it produced
    delivered: list[tuple[Step, Step, str]] = []  # (producing step, delivering step, arn)
    results: dict[str, ExecutionResult] = {}
    for step in steps:
        if not stack.starts_execution(step.key):
            raise ReplayError(f"line {step.line}: {step.key} is under BulkPrefix: no event")
        if step.op == "put":
            events[step.number] = stack.upload(step.key, step.body or b"", deliver=False)
        elif step.op == "delete":
            events[step.number] = stack.delete(step.key, deliver=False)
        if step.hold:
            continue
        source = steps[step.ref - 1] if step.ref else step
        arn = stack.start_execution([events[source.number]])
        delivered.append((source, step, arn))
        if not concurrent:
            [results[arn]] = stack.wait({arn: step.key}, timeout=_left(deadline))
    if concurrent and delivered:
        waited = stack.wait({a: s.key for _, s, a in delivered}, timeout=_left(deadline))
        results.update({r.execution_arn: r for r in waited})
    entries: dict[str, list[dict[str, Any]]] = {s.key: [] for s in steps}
    for source, step, arn in delivered:
        entries[source.key].append(_entry(source, events, step.number, results[arn]))
    done = {source.number for source, _, _ in delivered}
    for s in steps:
        if s.op != "deliver" and s.number not in done:
            entries[s.key].append(_entry(s, events, None, None))
    keys = [
        {"key": key, "events": found, **_now_holds(stack, key)} for key, found in entries.items()
    ]
    billed = sum(e["billed_tokens"] for k in keys for e in k["events"])
    if stack.emulator:
        billed = stack.emulator.stats()["billed_tokens"] - billed_before
    failed = sum(1 for r in results.values() if r.status != "SUCCEEDED")
    totals = {"steps": len(steps), "executions": len(results), "failed": failed,
              "billed_tokens": billed, "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
    return {"keys": keys, "totals": totals}


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def _entry(
    step: Step, events: dict[int, dict[str, Any]], at: int | None, result: ExecutionResult | None
) -> dict[str, Any]:
    """One delivery of the event of ``step`` (at step ``at``): what its execution reported."""
    sequencer = events[step.number]["detail"]["object"]["sequencer"]
    entry: dict[str, Any] = {"step": step.number, "op": step.op, "delivered_at": at,
                             "sequencer": sequencer}  # fmt: skip
    if result is None:
        return {**entry, "status": "not delivered", "execution": None, "billed_tokens": 0}
    found = result.output.get("results", [])  # a bundle's documents are KEY#ID
    docs = [r for r in found if r["key"] == step.key or r["key"].startswith(f"{step.key}#")]
    statuses = sorted({str(d["status"]) for d in docs})
    if result.status != "SUCCEEDED":
        status, execution = "failed", f"{result.status} in {result.failed_state}: {result.cause}"
    else:
        status, execution = "/".join(statuses) or "no result", "SUCCEEDED"
    entry.update(status=status, execution=execution, billed_tokens=result.as_dict()["tokens"])
    entry["arn"] = result.execution_arn
    if reasons := sorted({str(d["reason"]) for d in docs if d.get("reason")}):
        entry["reason"] = "; ".join(reasons)
    return entry


def _now_holds(stack: LocalStack, key: str) -> dict[str, Any]:
    """``rows`` in pgvector for ``key`` (a bundle's too) and ``current``: what S3 holds."""
    from batch_embedder.db.connection import connect

    with connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM batch_embedder.chunks WHERE source_bucket = %s "
            "AND (source_key = %s OR object_key = %s)",
            (stack.documents_bucket, key, key),
        ).fetchone()
    s3 = boto3.client("s3", region_name=REGION)
    try:
        s3.head_object(Bucket=stack.documents_bucket, Key=key)
        current = "present"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
            raise
        current = "deleted"
    return {"rows": cast(int, row[0]) if row else 0, "current": current}


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: one block per key, then the totals."""
    lines: list[str] = []
    for k in report["keys"]:
        lines.append(f"{k['key']}: {k['rows']} row(s) in pgvector; S3: {k['current']}")
        for e in k["events"]:
            at = e["delivered_at"]
            when = "held, never delivered" if at is None else f"delivered at step {at}"
            lines.append(
                f"  step {e['step']:>3} {e['op']:<6} {when:<22} {e['status']:<12} "
                f"{e['billed_tokens']:>7} tokens  {e['execution'] or '-'}"
                + (f"  ({e['reason']})" if e.get("reason") else "")
            )
    t = report["totals"]
    lines.append(
        f"{t['steps']} step(s), {t['executions']} execution(s), {t['failed']} failed; "
        f"billed {t['billed_tokens']} tokens; {t['seconds']:.1f} s"
    )
    return "\n".join(lines)

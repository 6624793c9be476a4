"""``batch-embedder local replay``: S3 events delivered in the order a file gives.

The replays here are the ordering cases the pipeline must survive (a late older version,
a duplicate, a late delete), run through :func:`batch_embedder_local.replay.replay` on the
session's stack; the parser is checked without one.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batch_embedder_local.replay import ReplayError, parse_steps, replay
from tests.utils import fresh, texts


def steps_of(*lines: dict[str, Any], base: Path = Path()) -> Any:
    return parse_steps([json.dumps(line) for line in lines], base=base)


def only_key(report: dict[str, Any], key: str) -> dict[str, Any]:
    [entry] = [k for k in report["keys"] if k["key"] == key]
    return dict(entry)


def test_lines_are_parsed_and_a_bad_op_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"from a file")
    lines = [
        '{"op": "put", "key": "a.txt", "text": "v1", "hold": true}',
        "",
        '{"op": "put", "key": "b.txt", "file": "b.txt"}',
        '{"op": "put", "key": "c.bin", "b64": "AAE="}',
        '{"op": "delete", "key": "a.txt"}',
        '{"op": "deliver", "ref": 1}',
    ]
    steps = parse_steps(lines, base=tmp_path)
    assert [(s.number, s.line, s.op, s.key) for s in steps] == [
        (1, 1, "put", "a.txt"),
        (2, 3, "put", "b.txt"),
        (3, 4, "put", "c.bin"),
        (4, 5, "delete", "a.txt"),
        (5, 6, "deliver", "a.txt"),
    ]
    assert steps[0].hold and steps[0].body == b"v1"
    assert steps[1].body == b"from a file" and steps[2].body == b"\x00\x01"
    assert steps[4].ref == 1
    bad = [lines[0], '{"op": "upsert", "key": "a.txt"}']
    with pytest.raises(ReplayError, match=r"EVENTS\.jsonl line 2: unknown op 'upsert'"):
        parse_steps(bad)
    for line, why in [
        ('{"op": "deliver", "ref": 2}', "ref 2 is not the number of an earlier step"),
        ('{"op": "put", "key": "a.txt"}', "exactly one of text, file or b64"),
        ('{"op": "put", "key": "a.txt", "text": "x", "hodl": true}', "put takes no hodl"),
        ('{"op": "put", "key": "a.txt", "file": "missing.txt"}', "no such file"),
        ("not json", "not JSON"),
    ]:
        with pytest.raises(ReplayError, match=f"line 2: .*{why}"):
            parse_steps([lines[0], line], base=tmp_path)


@pytest.mark.integration
def test_an_older_version_delivered_late_is_superseded(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"replay-late-{salt}/page.txt"
    steps = steps_of(
        {"op": "put", "key": key, "text": f"Version 1 ({salt}). " * 20, "hold": True},
        {"op": "put", "key": key, "text": f"Version 2 ({salt}). " * 20},
        {"op": "deliver", "ref": 1},
    )
    report = replay(stack, steps, timeout=300)
    entry = only_key(report, key)
    outcomes = [(e["step"], e["delivered_at"], e["status"]) for e in entry["events"]]
    assert outcomes == [(2, 2, "embedded"), (1, 3, "superseded")]
    assert all(e["execution"] == "SUCCEEDED" for e in entry["events"])
    assert entry["events"][1]["billed_tokens"] == 0
    assert entry["current"] == "present" and entry["rows"] > 0
    stored = texts(db, key)
    assert len(stored) == entry["rows"] and all("Version 2" in t for t in stored)
    assert report["totals"] == {**report["totals"], "steps": 3, "executions": 2, "failed": 0}


@pytest.mark.integration
def test_the_same_put_delivered_three_times_is_embedded_once(stack: Any) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"replay-dup-{salt}/errors.rst.txt"
    body = fresh("errors.rst.txt", salt).decode()
    steps = steps_of(
        {"op": "put", "key": key, "text": body},
        {"op": "deliver", "ref": 1},
        {"op": "deliver", "ref": 1},
    )
    report = replay(stack, steps, timeout=300)
    entry = only_key(report, key)
    first, *again = entry["events"]
    assert [e["delivered_at"] for e in entry["events"]] == [1, 2, 3]
    assert first["status"] == "embedded" and first["billed_tokens"] > 0
    assert [e["billed_tokens"] for e in again] == [0, 0]
    assert report["totals"]["billed_tokens"] == first["billed_tokens"]
    result = stack.result(first["arn"], key)
    assert entry["rows"] == result.output["chunks"] > 0


@pytest.mark.integration
def test_a_delete_delivered_after_a_newer_put_is_superseded(stack: Any) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"replay-del-{salt}/a.txt"
    steps = steps_of(
        {"op": "put", "key": key, "text": f"First ({salt}). " * 30},
        {"op": "delete", "key": key, "hold": True},
        {"op": "put", "key": key, "text": f"Second ({salt}). " * 30},
        {"op": "deliver", "ref": 2},
    )
    report = replay(stack, steps, timeout=300)
    entry = only_key(report, key)
    outcomes = [(e["step"], e["op"], e["status"]) for e in entry["events"]]
    assert outcomes == [(1, "put", "embedded"), (3, "put", "embedded"), (2, "delete", "superseded")]
    assert entry["rows"] > 0 and entry["current"] == "present"
    assert report["totals"]["failed"] == 0


@pytest.mark.integration
def test_concurrent_deliveries_end_with_the_newest_version(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"replay-conc-{salt}/page.txt"
    steps = steps_of(
        {"op": "put", "key": key, "text": f"Version 1 ({salt}). " * 20, "hold": True},
        {"op": "put", "key": key, "text": f"Version 2 ({salt}). " * 20},
        {"op": "deliver", "ref": 1},
        {"op": "delete", "key": key, "hold": True},
    )
    report = replay(stack, steps, concurrent=True, timeout=300)
    entry = only_key(report, key)
    by_step = {e["step"]: e for e in entry["events"]}
    assert by_step[2]["status"] == "embedded"
    assert by_step[4]["status"] == "not delivered" and by_step[4]["delivered_at"] is None
    assert entry["current"] == "deleted" and entry["rows"] > 0  # its delete never arrived
    assert all("Version 2" in t for t in texts(db, key))  # whichever execution ran first
    assert report["totals"]["failed"] == 0

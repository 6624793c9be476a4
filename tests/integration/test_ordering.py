"""pgvector holds exactly the current S3 version of each key, whatever the order of events.

S3 events are ordered per key by their ``sequencer``; the newest one applied is kept in
``batch_embedder.objects``, in the same transaction as the rows. Here the events of one
key are delivered out of order (each group started by hand, in the order a test chooses),
twice, or with a database that drops its connections.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.utils import fresh, texts, until

pytestmark = pytest.mark.integration


def run(stack: Any, event: dict[str, Any], key: str) -> Any:
    """Start one group with ``event`` and wait for it."""
    arn = stack.start_execution([event])
    [result] = stack.wait({arn: key}, timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    return result


def status_of(result: Any, key: str) -> str:
    document = result.document(key)
    assert document is not None, result.output.get("results")
    return str(document["status"])


def test_the_newest_of_three_versions_wins_whatever_the_order(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"order-{salt}/page.txt"
    versions = [f"Version {n} of the page ({salt}). " * 20 for n in (1, 2, 3)]
    events = [stack.upload(key, v.encode(), deliver=False) for v in versions]
    newest = run(stack, events[2], key)
    assert status_of(newest, key) == "embedded"
    stored = texts(db, key)
    assert stored and all("Version 3" in t for t in stored)
    billed = stack.emulator.stats()["billed_tokens"]
    for late in (events[0], events[1]):  # older versions arrive after the newest
        result = run(stack, late, key)
        assert status_of(result, key) == "superseded"
    assert texts(db, key) == stored
    assert stack.emulator.stats()["billed_tokens"] == billed  # nothing bought for them


def test_a_delete_wins_over_an_older_upload_and_loses_to_a_newer_one(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    raced, late = f"race-{salt}/a.txt", f"late-{salt}/a.txt"
    # A delete processed before the upload it follows: the late write brings nothing back.
    upload = stack.upload(raced, f"Old text ({salt}). ".encode() * 30, deliver=False)
    delete = stack.delete(raced, deliver=False)
    assert status_of(run(stack, delete, raced), raced) == "deleted"
    assert status_of(run(stack, upload, raced), raced) == "superseded"
    assert texts(db, raced) == []
    # A delete event processed after a newer upload: the current version stays.
    first = stack.upload(late, f"First ({salt}). ".encode() * 30, deliver=False)
    old_delete = stack.delete(late, deliver=False)
    newer = stack.upload(late, f"Second ({salt}). ".encode() * 30, deliver=False)
    run(stack, first, late)
    run(stack, newer, late)
    current = texts(db, late)
    assert current and all("Second" in t for t in current)
    assert status_of(run(stack, old_delete, late), late) == "superseded"
    assert texts(db, late) == current


def test_the_same_event_three_times_is_one_effect(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"dup-{salt}/errors.rst.txt"
    event = stack.upload(key, fresh("errors.rst.txt", salt), deliver=False)
    billed = stack.emulator.stats()["billed_tokens"]
    results = [run(stack, event, key) for _ in range(3)]
    # The second and third deliveries find the same object already embedded: no work.
    assert [status_of(r, key) for r in results] == ["embedded", "unchanged", "unchanged"]
    assert results[1].output["billed_tokens"] == results[2].output["billed_tokens"] == 0
    assert stack.emulator.stats()["billed_tokens"] - billed == results[0].output["billed_tokens"]
    assert len(texts(db, key)) == results[0].output["chunks"]


def test_deleting_a_key_never_touches_a_key_that_merely_starts_with_it(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    plain, lookalike = f"del-{salt}/a.txt", f"del-{salt}/a.txt#notes.txt"
    for key in (plain, lookalike):
        run(stack, stack.upload(key, f"{key} ({salt}) text. ".encode() * 20, deliver=False), key)
    assert texts(db, plain) and texts(db, lookalike)
    run(stack, stack.delete(plain, deliver=False), plain)
    assert texts(db, plain) == []
    assert texts(db, lookalike)  # a separate object: untouched


def test_a_bundle_uploaded_again_without_a_document_drops_that_document(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"bundle-{salt}/faq.bundle.jsonl"

    def bundle(ids: list[int]) -> bytes:
        lines = [{"id": i, "text": f"Answer {i} ({salt}): " + "details " * 30} for i in ids]
        return "\n".join(json.dumps(line) for line in lines).encode()

    run(stack, stack.upload(key, bundle([1, 2]), deliver=False), key)
    assert texts(db, f"{key}#1") and texts(db, f"{key}#2")
    run(stack, stack.upload(key, bundle([1]), deliver=False), key)
    assert texts(db, f"{key}#1")
    assert texts(db, f"{key}#2") == []  # no longer in the bundle: no longer searchable


def test_nul_and_lone_surrogates_are_removed_before_anything_is_paid(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    as_json = f"nul-{salt}/doc.json"
    as_jsonl = f"nul-{salt}/docs.jsonl"
    body = '{"text": "before\\u0000after and a lone \\ud800 surrogate (SALT)"}'.replace(
        "SALT", salt
    )
    files = [(as_json, body.encode()), (as_jsonl, (body + "\n" + body).encode())]
    [result] = stack.ingest(files, timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    for key in (as_json, as_jsonl):
        stored = texts(db, key)
        assert stored and all("beforeafter" in t and "\x00" not in t for t in stored), stored


def test_connections_killed_while_the_group_runs_are_ridden_out(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    """What a Multi-AZ failover does to open connections (AdminShutdown), for a few
    seconds; the Retry schedule itself outlasts 10 minutes (test_exactly_once)."""
    salt = uuid.uuid4().hex[:8]
    key = f"failover-{salt}/errors.rst.txt"
    own = db.execute("SELECT pg_backend_pid()").fetchone()
    assert own is not None
    stop = threading.Event()
    killed = [0]

    def kill_connections() -> None:
        with psycopg.connect(db.info.dsn, autocommit=True) as admin:
            me = admin.execute("SELECT pg_backend_pid()").fetchone()
            assert me is not None
            deadline = time.monotonic() + 8
            while not stop.is_set() and time.monotonic() < deadline:
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> ALL(%s) "
                    "AND backend_type = 'client backend'",
                    ([me[0], own[0]],),
                ).fetchall()
                killed[0] += len(rows)
                time.sleep(0.05)

    event = stack.upload(key, fresh("errors.rst.txt", salt), deliver=False)
    killer = threading.Thread(target=kill_connections, daemon=True)
    killer.start()
    try:
        result = run(stack, event, key)
    finally:
        stop.set()
        killer.join()
    assert killed[0] > 0
    assert len(texts(db, key)) == result.output["chunks"]


def test_the_same_bytes_under_three_keys_at_once_are_bought_once(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    body = fresh("errors.rst.txt", salt)
    keys = [f"same-{salt}/{n}.txt" for n in range(3)]
    billed = stack.emulator.stats()["billed_tokens"]
    arns = {stack.start_execution([stack.upload(k, body, deliver=False)]): k for k in keys}
    results = stack.wait(arns, timeout=300)
    assert [r.status for r in results] == ["SUCCEEDED"] * 3, [r.cause for r in results]
    bought = sum(r.output["billed_tokens"] for r in results)
    assert stack.emulator.stats()["billed_tokens"] - billed == bought
    assert bought == max(r.output["billed_tokens"] for r in results)  # one group paid
    assert len({tuple(texts(db, k)) for k in keys}) == 1


def test_content_whose_claimer_leaves_without_it_is_taken_over(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    body = fresh("whatnow.rst.txt", salt)
    claimer, waiter = f"capped-{salt}/a.txt", f"open-{salt}/b.txt"
    capped = {f"capped-{salt}/": 10_000_000}
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", json.dumps(capped))  # its documents get the prefix
    gate = stack.adapter.hold("BudgetCheckFunction")
    first = stack.start_execution([stack.upload(claimer, body, deliver=False)])
    until(lambda: stack.current_state(first) == "BudgetCheck", what="the claimer's claims")
    second = stack.start_execution([stack.upload(waiter, body, deliver=False)])
    until(lambda: stack.current_state(second) == "BudgetCheck", what="the waiter")
    # The claimer's prefix has no budget left: it leaves its document out, and its claims
    # with it. The waiter finds the content claimed by nobody and buys it.
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", json.dumps({f"capped-{salt}/": 10}))
    gate.set()
    left, taken = stack.wait({first: claimer, second: waiter}, timeout=300)
    assert left.status == taken.status == "SUCCEEDED", (left.cause, taken.cause)
    assert status_of(left, claimer) == "over_budget"
    assert status_of(taken, waiter) == "embedded"
    assert left.output["billed_tokens"] == 0 and taken.output["billed_tokens"] > 0
    assert len(texts(db, waiter)) == taken.output["chunks"]
    assert texts(db, claimer) == []


def test_a_group_waits_for_a_slow_batch_that_another_group_is_buying(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    body = fresh("appetite.rst.txt", salt)
    first_key, second_key = f"slow-{salt}/a.txt", f"slow-{salt}/b.txt"
    emulator.update_config(batch_in_progress_seconds=15.0)  # longer than one wait
    billed = stack.emulator.stats()["billed_tokens"]
    first = stack.start_execution([stack.upload(first_key, body, deliver=False)])
    until(lambda: stack.current_state(first) == "WaitForBatches", what="the first batch")
    second = stack.start_execution([stack.upload(second_key, body, deliver=False)])
    bought, waited = stack.wait({first: first_key, second: second_key}, timeout=300)
    assert bought.status == waited.status == "SUCCEEDED", (bought.cause, waited.cause)
    assert waited.output["billed_tokens"] == 0  # it waited for the other group's vectors
    assert waited.states.count("FetchAndWrite") == 1  # retried in place, no new round
    assert stack.emulator.stats()["billed_tokens"] - billed == bought.output["billed_tokens"]
    assert texts(db, first_key) == texts(db, second_key) != []


def test_three_versions_racing_with_the_oldest_one_slow(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"racing-{salt}/page.txt"
    events = [
        stack.upload(key, f"Version {n} ({salt}). ".encode() * (20 + n), deliver=False)
        for n in (1, 2, 3)
    ]
    emulator.update_config(batch_in_progress_seconds=8.0)  # the oldest version's batch
    oldest = stack.start_execution([events[0]])
    until(lambda: stack.current_state(oldest) == "WaitForBatches", what="the slow batch")
    emulator.update_config(batch_in_progress_seconds=0.2)
    newer = [stack.start_execution([e]) for e in events[1:]]
    results = stack.wait({arn: key for arn in [oldest, *newer]}, timeout=300)
    assert all(r.status == "SUCCEEDED" for r in results), [r.cause for r in results]
    assert status_of(results[0], key) == "superseded"  # it finished last, and lost
    stored = texts(db, key)
    assert stored and all("Version 3" in t for t in stored)

"""Daily budgets in DynamoDB (moto): reservations are atomic, idempotent and settled once."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest

from batch_embedder import models
from batch_embedder.aws import budget, s3
from batch_embedder.errors import BudgetExceededError
from batch_embedder.records import EmbedRow
from batch_embedder.settings import Settings
from batch_embedder.steps.budget import reserve_budget

DAY = "2030-01-02"
MODEL = "text-embedding-3-small"


def store() -> budget.BudgetStore:
    return budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])


def counter(day: str, scope: str = f"model:{MODEL}") -> dict[str, int]:
    return store().counter(day, scope).model_dump()


def scopes(limit: int) -> list[budget.BudgetScope]:
    return [budget.model_scope(MODEL, limit)]


def test_reserve_is_idempotent_per_job(stack: Any) -> None:
    args = {"key": "a.txt", "tokens": 500, "scopes": scopes(10_000), "day": DAY}
    r1 = store().reserve(job_id="idem", **args)  # type: ignore[arg-type]
    r2 = store().reserve(job_id="idem", **args)  # type: ignore[arg-type]
    assert r1 == r2
    assert counter(DAY)["held_tokens"] == 500
    assert store().settle(job_id="idem", billed_tokens=450, outcome="committed") == (
        50,
        450,
    )
    assert store().settle(job_id="idem", billed_tokens=450, outcome="committed") == (
        0,
        0,
    )
    assert counter(DAY) == {"held_tokens": 450, "reserved_tokens": 0, "committed_tokens": 450}


def test_over_budget_says_how_much_was_asked_and_what_remains(stack: Any) -> None:
    day = "2030-01-03"
    store().reserve(job_id="first", key="a.txt", tokens=700, scopes=scopes(1000), day=day)
    with pytest.raises(BudgetExceededError) as info:
        store().reserve(job_id="second", key="b.txt", tokens=400, scopes=scopes(1000), day=day)
    err = info.value
    assert (err.requested_tokens, err.remaining_tokens, err.limit_tokens) == (400, 300, 1000)
    assert str(err).startswith(
        "b.txt: needs 400 tokens but only 300 of the 1000-token daily limit of "
        f"model:{MODEL} remain for {day}"
    )
    assert counter(day)["held_tokens"] == 700


def test_a_prefix_scope_holds_only_its_share_and_settles_a_proportional_share(
    stack: Any,
) -> None:
    day = "2030-01-05"
    prefix = budget.prefix_scope("tenant-a/", 1_000)
    sc = [budget.model_scope(MODEL, 10_000), prefix]
    # A group of 1,200 tokens of which 800 are tenant-a/'s documents.
    store().reserve(job_id="ta-1", key="2 uploads: tenant-a/x.txt, other/y.txt",
                   tokens=1_200, scopes=sc, scope_tokens={prefix.name: 800}, day=day)  # fmt: skip
    assert counter(day)["held_tokens"] == 1_200
    assert counter(day, prefix.name) == {
        "held_tokens": 800, "reserved_tokens": 800, "committed_tokens": 0,
    }  # fmt: skip
    # The prefix limit is checked with the model limit, in one transaction.
    with pytest.raises(BudgetExceededError, match="prefix:tenant-a/") as info:
        store().reserve(job_id="ta-2", key="tenant-a/y.txt", tokens=300,
                       scopes=sc, scope_tokens={prefix.name: 300}, day=day)  # fmt: skip
    assert (info.value.requested_tokens, info.value.remaining_tokens) == (300, 200)
    # The failed group reserved nothing anywhere; other documents still fit the model limit.
    assert counter(day)["held_tokens"] == 1_200
    assert counter(day, prefix.name)["held_tokens"] == 800
    store().reserve(job_id="tb-1", key="b/x.txt", tokens=300, scopes=sc[:1], day=day)
    # Billed 10% less than reserved: the prefix commits its share (800/1200) of the bill.
    assert store().settle(job_id="ta-1", billed_tokens=1_080,
                         outcome="committed") == (120, 1_080)  # fmt: skip
    assert counter(day, prefix.name) == {
        "held_tokens": 720, "reserved_tokens": 0, "committed_tokens": 720,
    }  # fmt: skip
    assert counter(day) == {"held_tokens": 1_380, "reserved_tokens": 300, "committed_tokens": 1_080}
    # A failed group releases its prefix share too, committing the same share of its bill.
    store().reserve(job_id="ta-3", key="tenant-a/z.txt", tokens=400,
                   scopes=sc, scope_tokens={prefix.name: 200}, day=day)  # fmt: skip
    assert counter(day, prefix.name)["held_tokens"] == 920
    store().settle(job_id="ta-3", billed_tokens=100, outcome="released")
    assert counter(day, prefix.name) == {
        "held_tokens": 770, "reserved_tokens": 0, "committed_tokens": 770,
    }  # fmt: skip


def chunked_job(job_id: str, tokens: int, embed: models.EmbedPlan | None = None) -> Any:
    """A ChunkedJob as ChunkAndEstimate (and CheckCache, with ``embed``) hands it on."""
    work = os.environ["WORK_BUCKET"]
    return models.ChunkedJob(
        job_id=job_id, bucket="docs", source=f"{job_id}.txt", model=MODEL, dimensions=1536,
        manifest=models.S3Location(bucket=work, key=f"jobs/{job_id}/chunks.jsonl"),
        outcomes=models.S3Location(bucket=work, key=f"jobs/{job_id}/documents.jsonl"),
        uploads=1, chunks=max(1, tokens // 100), tokens=tokens, documents=1,
        estimate=models.CostEstimate(batch_usd=tokens * 0.01 / 1e6,
                                     standard_usd=tokens * 0.02 / 1e6),
        embed=embed,
    )  # fmt: skip


def test_budget_check_leaves_out_a_prefix_over_its_budget_and_reserves_the_rest(
    stack: Any,
) -> None:
    salt = uuid.uuid4().hex[:8]
    pa, pb = f"pa-{salt}/", f"pb-{salt}/"
    job_id = f"prefixes-{salt}"
    rows = [
        EmbedRow(seq=0, sha256="a" * 64, text="for pa", token_count=300, prefixes=[pa]),
        EmbedRow(seq=1, sha256="b" * 64, text="for pb", token_count=500, prefixes=[pb]),
        EmbedRow(seq=2, sha256="c" * 64, text="for pb and others", token_count=150,
                 prefixes=[pb, ""]),
        EmbedRow(seq=3, sha256="d" * 64, text="for others", token_count=50, urgent=True),
    ]  # fmt: skip
    manifest = models.S3Location(bucket=os.environ["WORK_BUCKET"], key=f"jobs/{job_id}/embed.jsonl")
    s3.write_jsonl(manifest.bucket, manifest.key, (r.model_dump() for r in rows))
    plan = models.EmbedPlan(
        api="sync+batch", manifest=manifest, chunks=4, tokens=1_000, sync_chunks=1,
        sync_tokens=50, batch_chunks=3, batch_tokens=950, cache_hits=0, cached_tokens=0,
        prefix_tokens={pa: 300, pb: 650},
    )  # fmt: skip
    settings = Settings(prefix_token_limits={pa: 1_000, pb: 400})
    day = budget.utc_day()
    model_before = counter(day)["held_tokens"]
    decision = reserve_budget(chunked_job(job_id, 1_000, plan), settings)
    # pb/ needs 650 of its 400: its documents are left out; content another document
    # needs (row 2) is still embedded, but not charged to pb/.
    assert decision.excluded_prefixes == [pb]
    assert decision.reservation is not None and decision.reservation.tokens == 500
    assert decision.embed is not None
    assert (decision.embed.api, decision.embed.chunks, decision.embed.tokens) == (
        "sync+batch", 3, 500,
    )  # fmt: skip
    assert (decision.embed.sync_tokens, decision.embed.batch_tokens) == (50, 450)
    assert decision.embed.prefix_tokens == {pa: 300}
    assert counter(day)["held_tokens"] - model_before == 500
    assert counter(day, f"prefix:{pa}")["held_tokens"] == 300
    assert counter(day, f"prefix:{pb}")["held_tokens"] == 0
    store().settle(job_id=job_id, billed_tokens=450, outcome="committed")
    assert counter(day, f"prefix:{pa}") == {
        "held_tokens": 270, "reserved_tokens": 0, "committed_tokens": 270,
    }  # fmt: skip


def test_concurrent_reservations_never_pass_the_limit(stack: Any) -> None:
    day = "2030-01-04"
    limit, each, workers = 10_500, 1_000, 24
    won: list[str] = []
    lost: list[str] = []
    barrier = threading.Barrier(workers)

    def race(i: int) -> None:
        barrier.wait()
        try:
            store().reserve(
                job_id=f"race-{i}", key=f"{i}.txt", tokens=each, scopes=scopes(limit),
                day=day,
            )  # fmt: skip
            won.append(f"race-{i}")
        except BudgetExceededError:
            lost.append(f"race-{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 10 and len(lost) == workers - 10
    assert counter(day)["held_tokens"] == 10 * each
    # Settle them all, some twice, concurrently: nothing is lost or counted twice.
    settle = [
        threading.Thread(
            target=store().settle,
            kwargs={"job_id": job, "billed_tokens": 900, "outcome": "committed"},
        )
        for job in won + won
    ]
    for t in settle:
        t.start()
    for t in settle:
        t.join()
    assert counter(day) == {"held_tokens": 9000, "reserved_tokens": 0, "committed_tokens": 9000}


def test_sweep_finds_crashed_reservations_and_settle_commits_only_what_the_bill_grew_by(
    stack: Any,
) -> None:
    day = "2030-01-06"
    store().reserve(job_id="crashed", key="c.txt", tokens=400, scopes=scopes(10_000),
                   day=day, hold_seconds=60)  # fmt: skip
    store().reserve(job_id="alive", key="d.txt", tokens=100, scopes=scopes(10_000),
                   day=day, hold_seconds=3600)  # fmt: skip
    assert "crashed" not in store().held_jobs(now=time.time())
    found = store().held_jobs(now=time.time() + 120)
    assert "crashed" in found and "alive" not in found
    # The sweep commits what the crashed run's batches billed and gives the rest back, once.
    assert store().settle(job_id="crashed", billed_tokens=300, outcome="swept") == (
        100,
        300,
    )
    assert "crashed" not in store().held_jobs(now=time.time() + 120)
    assert counter(day) == {"held_tokens": 400, "reserved_tokens": 100, "committed_tokens": 300}
    # A batch of the crashed run ingested later grows its bill: only the difference counts.
    assert store().settle(job_id="crashed", billed_tokens=380, outcome="committed") == (
        0,
        80,
    )
    assert store().settle(job_id="crashed", billed_tokens=380, outcome="swept") == (0, 0)
    assert counter(day) == {"held_tokens": 480, "reserved_tokens": 100, "committed_tokens": 380}


def test_wait_mode_waits_for_the_next_utc_day(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = chunked_job("wait-1", 2_000)
    held_today = counter(budget.utc_day())["held_tokens"]  # other tests' runs, same UTC day
    monkeypatch.setenv("DAILY_TOKEN_LIMIT", str(held_today + job.tokens * 2 - 1))
    first = reserve_budget(job, Settings())
    assert first.reservation is not None and first.budget_wait_seconds == 0
    assert first.reservation.tokens == job.tokens
    monkeypatch.setenv("BUDGET_EXCEEDED_ACTION", "wait")
    second = reserve_budget(job.model_copy(update={"job_id": "wait-2"}), Settings())
    assert second.reservation is None
    assert 0 < second.budget_wait_seconds <= 24 * 3600 + 1
    assert second.budget_wait_seconds == pytest.approx(budget.seconds_to_next_day(), abs=5)
    # Nothing was held for the waiting group.
    assert counter(budget.utc_day())["held_tokens"] == held_today + job.tokens
    # A group larger than a whole day's limit fails even in wait mode: waiting cannot help.
    monkeypatch.setenv("DAILY_TOKEN_LIMIT", str(job.tokens - 1))
    with pytest.raises(BudgetExceededError):
        reserve_budget(job.model_copy(update={"job_id": "wait-3"}), Settings())
    # Today's counter is shared with the other modules' runs: give the reservation back.
    store().settle(job_id="wait-1", billed_tokens=0, outcome="released")
    assert counter(budget.utc_day())["held_tokens"] == held_today

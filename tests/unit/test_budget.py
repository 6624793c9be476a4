"""Daily budgets in DynamoDB (moto): reservations are atomic, idempotent and settled once."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from batch_embedder.aws import budget
from batch_embedder.errors import BudgetExceededError
from batch_embedder.settings import Settings
from batch_embedder.steps.budget import reserve_budget, scopes_for

DAY = "2030-01-02"
MODEL = "text-embedding-3-small"


def tables() -> dict[str, str]:
    return {"jobs_table": os.environ["JOBS_TABLE"], "usage_table": os.environ["USAGE_TABLE"]}


def counter(day: str, scope: str = f"model:{MODEL}") -> dict[str, int]:
    return budget.get_counter(os.environ["USAGE_TABLE"], day, scope)


def scopes(limit: int) -> list[budget.BudgetScope]:
    return [budget.model_scope(MODEL, limit)]


def test_reserve_is_idempotent_per_job(stack: Any) -> None:
    args = {"key": "a.txt", "tokens": 500, "scopes": scopes(10_000), "day": DAY}
    r1 = budget.reserve(**tables(), job_id="idem", **args)  # type: ignore[arg-type]
    r2 = budget.reserve(**tables(), job_id="idem", **args)  # type: ignore[arg-type]
    assert r1 == r2
    assert counter(DAY)["held_tokens"] == 500
    assert budget.settle(**tables(), job_id="idem", billed_tokens=450, outcome="committed") == (
        50,
        450,
    )
    assert budget.settle(**tables(), job_id="idem", billed_tokens=450, outcome="committed") == (
        0,
        0,
    )
    assert counter(DAY) == {"held_tokens": 450, "reserved_tokens": 0, "committed_tokens": 450}


def test_over_budget_says_how_much_was_asked_and_what_remains(stack: Any) -> None:
    day = "2030-01-03"
    budget.reserve(
        **tables(), job_id="first", key="a.txt", tokens=700, scopes=scopes(1000), day=day
    )
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve(
            **tables(), job_id="second", key="b.txt", tokens=400, scopes=scopes(1000), day=day
        )
    err = info.value
    assert (err.requested_tokens, err.remaining_tokens, err.limit_tokens) == (400, 300, 1000)
    assert str(err).startswith(
        "b.txt: needs 400 tokens but only 300 of the 1000-token daily limit of "
        f"model:{MODEL} remain for {day}"
    )
    assert counter(day)["held_tokens"] == 700


def test_prefix_limit_is_checked_with_the_model_limit_in_one_transaction(stack: Any) -> None:
    day = "2030-01-05"
    settings = Settings(daily_token_limit=10_000, prefix_token_limits={"tenant-a/": 1_000})
    sc = scopes_for(settings, MODEL, "tenant-a/x.txt")
    assert [s.name for s in sc] == [f"model:{MODEL}", "prefix:tenant-a/"]
    assert [s.name for s in scopes_for(settings, MODEL, "other/x.txt")] == [f"model:{MODEL}"]
    budget.reserve(**tables(), job_id="ta-1", key="tenant-a/x.txt", tokens=800, scopes=sc, day=day)
    with pytest.raises(BudgetExceededError, match="prefix:tenant-a/"):
        budget.reserve(
            **tables(), job_id="ta-2", key="tenant-a/y.txt", tokens=300, scopes=sc, day=day
        )
    # The failed job reserved nothing anywhere; another tenant still fits under the model limit.
    assert counter(day)["held_tokens"] == 800
    assert counter(day, "prefix:tenant-a/")["held_tokens"] == 800
    budget.reserve(**tables(), job_id="tb-1", key="b/x.txt", tokens=300, scopes=sc[:1], day=day)
    budget.settle(**tables(), job_id="ta-1", billed_tokens=790, outcome="committed")
    assert counter(day, "prefix:tenant-a/") == {
        "held_tokens": 790, "reserved_tokens": 0, "committed_tokens": 790,
    }  # fmt: skip
    assert counter(day)["held_tokens"] == 1090


def test_concurrent_reservations_never_pass_the_limit(stack: Any) -> None:
    day = "2030-01-04"
    limit, each, workers = 10_500, 1_000, 24
    won: list[str] = []
    lost: list[str] = []
    barrier = threading.Barrier(workers)

    def race(i: int) -> None:
        barrier.wait()
        try:
            budget.reserve(
                **tables(), job_id=f"race-{i}", key=f"{i}.txt", tokens=each, scopes=scopes(limit),
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
            target=budget.settle,
            kwargs={**tables(), "job_id": job, "billed_tokens": 900, "outcome": "committed"},
        )
        for job in won + won
    ]
    for t in settle:
        t.start()
    for t in settle:
        t.join()
    assert counter(day) == {"held_tokens": 9000, "reserved_tokens": 0, "committed_tokens": 9000}


def test_sweep_releases_reservations_of_crashed_executions(stack: Any) -> None:
    day = "2030-01-06"
    budget.reserve(**tables(), job_id="crashed", key="c.txt", tokens=400, scopes=scopes(10_000),
                   day=day, hold_seconds=60)  # fmt: skip
    budget.reserve(**tables(), job_id="alive", key="d.txt", tokens=100, scopes=scopes(10_000),
                   day=day, hold_seconds=3600)  # fmt: skip
    assert budget.sweep_expired(**tables(), now=time.time()) == []
    assert budget.sweep_expired(**tables(), now=time.time() + 120) == [("crashed", 400)]
    assert budget.sweep_expired(**tables(), now=time.time() + 120) == []  # once only
    assert counter(day) == {"held_tokens": 100, "reserved_tokens": 100, "committed_tokens": 0}
    # The crashed run finishes after all: what it was billed is still committed.
    assert budget.settle(**tables(), job_id="crashed", billed_tokens=380, outcome="committed") == (
        0,
        380,
    )
    assert counter(day) == {"held_tokens": 480, "reserved_tokens": 100, "committed_tokens": 380}


def test_wait_mode_waits_for_the_next_utc_day(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_embedder import models

    job = models.ChunkedJob.model_validate_json(
        (
            __import__("tests.conftest", fromlist=["ROOT"]).ROOT / "events" / "budget_check.json"
        ).read_text()
    )
    job = job.model_copy(update={"job_id": "wait-1"})
    held_today = counter(budget.utc_day())["held_tokens"]  # other tests' runs, same UTC day
    monkeypatch.setenv("DAILY_TOKEN_LIMIT", str(held_today + job.tokens * 2 - 1))
    first = reserve_budget(job, Settings())
    assert first.reservation is not None and first.budget_wait_seconds == 0
    monkeypatch.setenv("BUDGET_EXCEEDED_ACTION", "wait")
    second = reserve_budget(job.model_copy(update={"job_id": "wait-2"}), Settings())
    assert second.reservation is None
    assert 0 < second.budget_wait_seconds <= 24 * 3600 + 1
    assert second.budget_wait_seconds == pytest.approx(budget.seconds_to_next_day(), abs=5)

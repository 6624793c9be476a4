"""The daily budget in DynamoDB (moto): reservations are atomic, idempotent and settled once."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from batch_embedder.aws import budget
from batch_embedder.errors import BudgetExceededError

DAY = "2030-01-02"


def tables() -> dict[str, str]:
    return {"jobs_table": os.environ["JOBS_TABLE"], "usage_table": os.environ["USAGE_TABLE"]}


def test_reserve_is_idempotent_per_job(stack: Any) -> None:
    r1 = budget.reserve(
        **tables(), job_id="idem", key="a.txt", tokens=500, limit_tokens=10_000, day=DAY
    )
    r2 = budget.reserve(
        **tables(), job_id="idem", key="a.txt", tokens=500, limit_tokens=10_000, day=DAY
    )
    assert r1 == r2
    assert budget.get_counter(os.environ["USAGE_TABLE"], DAY)["held_tokens"] == 500
    assert budget.settle(**tables(), job_id="idem", billed_tokens=450, outcome="committed") == (
        50,
        450,
    )
    assert budget.settle(**tables(), job_id="idem", billed_tokens=450, outcome="committed") == (
        0,
        0,
    )
    counter = budget.get_counter(os.environ["USAGE_TABLE"], DAY)
    assert counter == {"held_tokens": 450, "reserved_tokens": 0, "committed_tokens": 450}


def test_over_budget_says_how_much_was_asked_and_what_remains(stack: Any) -> None:
    day = "2030-01-03"
    budget.reserve(**tables(), job_id="first", key="a.txt", tokens=700, limit_tokens=1000, day=day)
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve(
            **tables(), job_id="second", key="b.txt", tokens=400, limit_tokens=1000, day=day
        )
    err = info.value
    assert (err.requested_tokens, err.remaining_tokens, err.limit_tokens) == (400, 300, 1000)
    assert "b.txt: needs 400 tokens but only 300 of the 1000-token daily limit remain" in str(err)
    assert budget.get_counter(os.environ["USAGE_TABLE"], day)["held_tokens"] == 700


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
                **tables(),
                job_id=f"race-{i}",
                key=f"{i}.txt",
                tokens=each,
                limit_tokens=limit,
                day=day,
            )
            won.append(f"race-{i}")
        except BudgetExceededError:
            lost.append(f"race-{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 10 and len(lost) == workers - 10
    assert budget.get_counter(os.environ["USAGE_TABLE"], day)["held_tokens"] == 10 * each
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
    counter = budget.get_counter(os.environ["USAGE_TABLE"], day)
    assert counter == {"held_tokens": 9000, "reserved_tokens": 0, "committed_tokens": 9000}

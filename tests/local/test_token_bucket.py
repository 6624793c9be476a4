"""The DynamoDB token bucket and batch-queue limits (moto, each request atomic as on AWS).

Time is simulated: every bucket reads an injected clock, so a minute of traffic from 16
threads takes a second or two of real time and the results do not depend on the machine.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from batch_embedder.aws import dynamodb
from batch_embedder.aws.batch_queue import BatchQueueLimits
from batch_embedder.aws.levels import CONTENTION_WAIT_SECONDS, Acquire, RateLimitWaitTooLong
from batch_embedder.aws.rate_bucket import TokenBucket
from batch_embedder.errors import BatchEmbedderError
from batch_embedder_local.moto_tables import moto_table

#: A realistic epoch (2027-01-15), so Decimal precision is exercised on large numbers.
T0 = 1_800_000_000.0
#: Simulated wake-up granularity of the concurrency test (seconds).
TICK = 0.25


@pytest.fixture()
def table() -> Iterator[str]:
    """The usage table, created from template.yaml's own definition, on moto."""
    with moto_table("UsageTable", "usage") as name:
        yield name


class ManualClock:
    """A clock the test moves by hand; ``sleep`` moves it too."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now = round(self.now + seconds, 6)


def options(table: str, clock: ManualClock, **kwargs: Any) -> dict[str, Any]:
    """TokenBucket arguments: 600 RPM / 60,000 TPM on ``clock`` unless overridden."""
    return {
        "table": table,
        "scope": "org-test",
        "model": "text-embedding-3-small",
        "requests_per_minute": 600,
        "tokens_per_minute": 60_000,
        "clock": clock,
        "sleep": clock.sleep,
        **kwargs,
    }


def bucket(table: str, clock: ManualClock, **kwargs: Any) -> TokenBucket:
    return TokenBucket(**options(table, clock, **kwargs))


# -- try_acquire / acquire ---------------------------------------------------------------


def test_grants_what_is_available_and_says_how_long_to_wait(table: str) -> None:
    clock = ManualClock()
    b = bucket(table, clock, requests_per_minute=60, tokens_per_minute=1000)
    assert b.try_acquire(1000) == Acquire(True, 0.0, 0)
    refused = b.try_acquire(100)
    assert not refused.granted
    assert refused.wait_seconds == pytest.approx(6.0)  # 100 tokens at 1000/60 s
    clock.now += 5.999
    assert not b.try_acquire(100).granted
    clock.now = T0 + 6.0
    assert b.try_acquire(100).granted
    state = b.state()
    assert state.available_tokens == 0.0
    assert state.available_requests == 59.0  # refilled to the 60 cap, then 1 taken
    assert state.version == 2
    # Requests are a dimension of their own: 60 one-token requests empty it.
    clock.now += 60
    for _ in range(60):
        assert b.try_acquire(1).granted
    refused = b.try_acquire(1)
    assert not refused.granted and refused.wait_seconds == pytest.approx(1.0)


def test_item_layout_keeps_decimal_precision(table: str) -> None:
    clock = ManualClock(T0 + 0.1234)
    b = bucket(table, clock, tokens_per_minute=1_000_000, requests_per_minute=3000)
    assert b.try_acquire(600_000) == Acquire(True, 0.0, 0)
    clock.now = T0 + 0.1234 + 0.0105
    assert b.try_acquire(10).granted
    item = dynamodb.ddb().get_item(TableName=table, Key=b.key, ConsistentRead=True)["Item"]
    assert item["pk"] == "bucket#org-test#text-embedding-3-small" and item["sk"] == "rate"
    # Refilled for 0.010 s (the clock is floored to the ms): 166.666 tokens (floored to
    # 3 decimals) and 0.5 requests.
    assert item["available_tokens"] == Decimal("400156.666")
    assert item["available_requests"] == Decimal("2998.500")
    assert item["refilled_at"] == Decimal("1800000000.133")
    assert item["version"] == 2
    assert "blocked_until" not in item
    assert item["expires_at"] == 1_800_000_000 + 24 * 3600


def test_rounding_is_conservative_and_small(table: str) -> None:
    clock = ManualClock()
    b = bucket(table, clock, tokens_per_minute=1000, requests_per_minute=600, initial_fill=0.0)
    assert not b.try_acquire(1).granted  # creates the empty bucket
    for _ in range(60):  # 60 writes 1 ms apart, each refilling 1/60 token (floored)
        clock.now = round(clock.now + 0.001, 6)
        assert b.try_acquire(0, requests=0).granted
    available = b.state().available_tokens
    assert 1.0 - 60 * 0.001 <= available < 1.0  # never more than exact, at most 1e-3 less
    assert not b.try_acquire(1).granted


def test_a_lost_race_is_retried_from_the_winners_item_and_counted(table: str) -> None:
    clock = ManualClock()
    other = bucket(table, clock, tokens_per_minute=1000)
    other.try_acquire(0, requests=0)  # the item exists
    raced = False

    def racing_clock() -> float:
        # Called between this worker's read and its write: another worker writes first.
        nonlocal raced
        if not raced:
            raced = True
            assert other.try_acquire(600).granted
        return clock.now

    worker = TokenBucket(**{**options(table, clock, tokens_per_minute=1000), "clock": racing_clock})
    assert worker.try_acquire(300) == Acquire(True, 0.0, 1)
    assert other.state().available_tokens == 100.0
    # Full again; the winner takes 600 of 1000 between our read and write: our 500 no
    # longer fit in what it left, so after the conflict we are refused (and write nothing).
    clock.now += 60
    raced = False
    refused = worker.try_acquire(500)
    assert (refused.granted, refused.conflicts) == (False, 1)
    assert refused.wait_seconds == pytest.approx(6.0)  # 100 tokens short at 1000 / 60 s
    assert other.state().available_tokens == 400.0
    # With a single attempt allowed, losing the race is a refusal with a short wait.
    raced = False
    clock.now += 60
    once = TokenBucket(
        **{
            **options(table, clock, tokens_per_minute=1000, max_attempts=1),
            "clock": racing_clock,
        }
    )
    assert once.try_acquire(1) == Acquire(False, CONTENTION_WAIT_SECONDS, 1)


def test_too_big_for_the_bucket_is_a_value_error(table: str) -> None:
    b = bucket(table, ManualClock())
    with pytest.raises(ValueError, match=r"60001 tokens can never be granted.*60000 tokens per"):
        b.try_acquire(60_001)
    with pytest.raises(ValueError, match=r"601 requests can never be granted.*600 requests"):
        b.try_acquire(1, requests=601)
    with pytest.raises(ValueError, match="non-negative"):
        b.try_acquire(-1)


def test_acquire_sleeps_until_granted_and_returns_the_wait(table: str) -> None:
    clock = ManualClock()
    b = bucket(table, clock, tokens_per_minute=6000, requests_per_minute=600)
    assert b.acquire(6000, max_wait_seconds=0) == 0.0
    waited = b.acquire(1500, max_wait_seconds=30)
    assert waited == pytest.approx(15.0)  # 1500 tokens at 100 per second
    assert sum(clock.slept) == pytest.approx(15.0) and clock.now == pytest.approx(T0 + 15, abs=1e-6)


def test_acquire_refuses_to_wait_longer_than_allowed(table: str) -> None:
    clock = ManualClock()
    b = bucket(table, clock, tokens_per_minute=6000, requests_per_minute=600)
    b.acquire(6000, max_wait_seconds=0)
    with pytest.raises(RateLimitWaitTooLong) as info:
        b.acquire(3000, max_wait_seconds=10)
    assert isinstance(info.value, BatchEmbedderError)
    assert info.value.wait_seconds == pytest.approx(30.0)
    assert info.value.max_wait_seconds == 10
    assert "30.000 s" in str(info.value)
    assert clock.slept == []  # it did not sleep in vain


# -- adaptive: headers and 429 -------------------------------------------------------------


def test_lower_server_remaining_wins_higher_is_ignored(table: str) -> None:
    clock = ManualClock()
    b = bucket(table, clock, requests_per_minute=3000, tokens_per_minute=1_000_000)
    b.try_acquire(1000)
    b.observe_headers(
        {
            "X-RateLimit-Remaining-Requests": "10",
            "x-ratelimit-remaining-tokens": "5000",
            "x-ratelimit-reset-requests": "59s",
            "x-ratelimit-reset-tokens": "300ms",
        }
    )
    state = b.state()
    assert (state.available_requests, state.available_tokens) == (10.0, 5000.0)
    assert b.try_acquire(5000).granted
    assert not b.try_acquire(1).granted
    version = b.state().version
    # A higher server view changes nothing (and writes nothing).
    clock.now += 0.06  # refills 3 requests, 1000 tokens
    b.observe_headers(
        {"x-ratelimit-remaining-requests": "2999", "x-ratelimit-remaining-tokens": "999000"}
    )
    state = b.state()
    assert state.version == version
    assert (state.available_requests, state.available_tokens) == (12.0, 1000.0)


def test_reset_headers_bound_what_is_free_now(table: str) -> None:
    clock = ManualClock()
    b = bucket(table, clock, requests_per_minute=3000, tokens_per_minute=1_000_000)
    # Full again in 30 s at 1,000,000 per 60 s: at most 500,000 free now.
    b.observe_headers({"x-ratelimit-reset-tokens": "30s", "x-ratelimit-reset-requests": "20ms"})
    state = b.state()
    assert state.available_tokens == 500_000.0
    assert state.available_requests == 2999.0
    # A reset longer than the minute window belongs to another limit; malformed is ignored.
    b.observe_headers({"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-requests": "x"})
    assert b.state().available_tokens == 500_000.0


def test_a_429_blocks_every_worker_until_retry_after(table: str) -> None:
    clock = ManualClock()
    workers = [bucket(table, clock) for _ in range(16)]
    workers[0].observe_rate_limited(2.5)
    assert workers[5].state().blocked_until == pytest.approx(T0 + 2.5, abs=1e-6)

    def everyone_tries() -> list[Acquire]:
        results: list[Acquire] = [Acquire(False, 0.0, 0)] * len(workers)
        barrier = threading.Barrier(len(workers))

        def run(i: int) -> None:
            barrier.wait()
            results[i] = workers[i].try_acquire(100)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    clock.now = T0 + 1.0
    blocked = everyone_tries()
    assert not any(r.granted for r in blocked)
    assert all(r.wait_seconds == pytest.approx(1.5) for r in blocked)
    clock.now = T0 + 2.499
    assert not any(r.granted for r in everyone_tries())
    # After the block: refilled for 2.5 s (25 requests, 2,500 tokens), 16 x 100 tokens fit.
    clock.now = T0 + 2.5
    assert all(r.granted for r in everyone_tries())
    assert workers[3].state().available_tokens == pytest.approx(2500 - 1600)
    # A shorter 429 never shortens a longer block.
    workers[1].observe_rate_limited(10)
    workers[2].observe_rate_limited(1)
    assert workers[0].state().blocked_until == pytest.approx(T0 + 12.5, abs=1e-6)


# -- concurrency: 16 workers, one simulated minute ---------------------------------------


class SimulationOver(Exception):
    """Raised inside a worker's sleep when simulated time is up."""


class SimClock:
    """Discrete-event simulated time shared by worker threads.

    Time stands still while any worker is busy (talking to DynamoDB); when every worker is
    asleep, the driver jumps the clock to the earliest wake-up time and wakes those
    workers. Wake-ups are rounded up to a ``tick`` so that workers wake together and race
    for the same capacity (conflicting writes). Each thread's last reading is kept, so a
    grant is logged at the exact time the bucket computed it with.
    """

    def __init__(self, start: float, workers: int, tick: float) -> None:
        self._start = start
        self._tick = tick
        self._cond = threading.Condition()
        self._now = start
        self._busy = workers
        self._wakeups: list[float] = []
        self._over = False
        self._last = threading.local()

    def __call__(self) -> float:
        with self._cond:
            now = self._now
        self._last.value = now
        return now

    def last_reading(self) -> float:
        value: float = self._last.value
        return value

    def sleep(self, seconds: float) -> None:
        with self._cond:
            if self._over:
                raise SimulationOver
            ticks = math.ceil(round((self._now + seconds - self._start) / self._tick, 6))
            target = round(self._start + ticks * self._tick, 6)
            if target <= self._now:
                return
            self._busy -= 1
            heapq.heappush(self._wakeups, target)
            self._cond.notify_all()
            while self._now < target and not self._over:
                self._cond.wait()
            if self._over:
                raise SimulationOver

    def leave(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def drive(self, until: float, real_timeout: float = 30.0) -> None:
        """Advance time event by event up to ``until``, then end the simulation."""
        with self._cond:
            while True:
                if not self._cond.wait_for(lambda: self._busy == 0, timeout=real_timeout):
                    raise AssertionError("workers stopped making progress")
                if not self._wakeups or self._wakeups[0] > until:
                    break
                self._now = self._wakeups[0]
                while self._wakeups and self._wakeups[0] <= self._now:
                    heapq.heappop(self._wakeups)
                    self._busy += 1
                self._cond.notify_all()
            self._over = True
            self._cond.notify_all()


def run_minute(
    table: str,
    *,
    workers: int,
    tokens: tuple[int, int],
    requests: tuple[int, int],
    rpm: int,
    tpm: int,
    seed: int,
    tick: float,
) -> tuple[list[tuple[float, int, int]], int, TokenBucket]:
    """Greedy workers, one simulated minute from an empty bucket.

    Each worker asks for a random number of tokens and of requests within the given
    bounds, sleeps for the bucket's wait hint (rounded up to ``tick`` seconds) when
    refused, and asks again.

    Returns:
        The log of grants ``(time, tokens, requests)`` sorted by time, the conditional-write
        conflicts, and a bucket object reading the same item at the end of the minute.
    """
    clock = SimClock(T0, workers, tick)
    log: list[tuple[float, int, int]] = []
    errors: list[BaseException] = []
    conflicts = 0
    lock = threading.Lock()

    def worker(i: int) -> None:
        nonlocal conflicts
        rng = random.Random(seed * 1000 + i)
        b = TokenBucket(
            table=table,
            scope=f"sim-{seed}",
            model="text-embedding-3-small",
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            initial_fill=0.0,
            clock=clock,
            sleep=clock.sleep,
        )
        try:
            while True:
                want_tokens, want_requests = rng.randint(*tokens), rng.randint(*requests)
                while True:
                    result = b.try_acquire(want_tokens, want_requests)
                    with lock:
                        conflicts += result.conflicts
                    if result.granted:
                        break
                    clock.sleep(result.wait_seconds)
                with lock:
                    log.append((clock.last_reading(), want_tokens, want_requests))
        except SimulationOver:
            pass
        except BaseException as exc:  # reported below; the driver must not hang
            errors.append(exc)
        finally:
            clock.leave()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    clock.drive(until=T0 + 60.0)
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    inspector = TokenBucket(
        table=table,
        scope=f"sim-{seed}",
        model="text-embedding-3-small",
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        clock=lambda: T0 + 60.0,
    )
    return sorted(log), conflicts, inspector


def max_window(log: list[tuple[float, int, int]], column: int, seconds: float) -> int:
    """The most granted (column 1: tokens, 2: requests) in any closed window of ``seconds``."""
    best = 0
    end = 0
    total = 0
    for start in range(len(log)):
        while end < len(log) and log[end][0] <= log[start][0] + seconds:
            total += int(log[end][column])
            end += 1
        best = max(best, total)
        total -= int(log[start][column])
    return best


@pytest.mark.parametrize(
    ("tokens", "requests", "binding"),
    [((800, 1200), (1, 1), "tokens"), ((10, 100), (5, 15), "requests")],
    ids=["tpm-binds", "rpm-binds"],
)
def test_sixteen_workers_never_pass_the_limits_and_use_them(
    table: str, tokens: tuple[int, int], requests: tuple[int, int], binding: str
) -> None:
    rpm, tpm, workers = 600, 60_000, 16
    log, conflicts, inspector = run_minute(
        table,
        workers=workers,
        tokens=tokens,
        requests=requests,
        rpm=rpm,
        tpm=tpm,
        seed=tokens[0],
        tick=TICK,
    )
    granted_tokens = sum(t for _, t, _ in log)
    granted_requests = sum(r for _, _, r in log)
    start = Decimal(repr(T0))
    assert all(T0 <= t <= T0 + 60 for t, _, _ in log)
    # Never ahead of the refill line: by any grant's time t, at most capacity * (t - T0) / 60
    # (the bucket started empty). Exact arithmetic: times are ms-precise decimals.
    cum_tokens = cum_requests = 0
    for t, n_tokens, n_requests in log:
        cum_tokens += n_tokens
        cum_requests += n_requests
        elapsed = Decimal(repr(t)) - start
        assert cum_tokens <= tpm * elapsed / 60, (t - T0, cum_tokens)
        assert cum_requests <= rpm * elapsed / 60, (t - T0, cum_requests)
    # Any 60 s sliding window stays within the per-minute limits...
    window_tokens, window_requests = max_window(log, 1, 60.0), max_window(log, 2, 60.0)
    assert window_tokens <= tpm and window_requests <= rpm
    # ... and the binding one is used to at least 90 %.
    utilisation = granted_tokens / tpm if binding == "tokens" else granted_requests / rpm
    assert utilisation >= 0.9, (utilisation, granted_tokens, granted_requests)
    # No update was lost: what is left + what was granted = one minute of refill (less at
    # most 0.001 per write, the conservative rounding).
    state = inspector.state()
    assert tpm - 1.0 <= granted_tokens + state.available_tokens <= tpm
    assert rpm - 1.0 <= granted_requests + state.available_requests <= rpm
    assert state.version >= len(log)
    print(
        f"\n{binding}: {len(log)} grants from {workers} workers, {granted_requests}/{rpm} "
        f"requests, {granted_tokens}/{tpm} tokens, utilisation {utilisation:.2%}, max 60 s "
        f"window {window_tokens} tokens / {window_requests} requests, {conflicts} conflicts, "
        f"{state.version} writes"
    )


# -- batch queue limits --------------------------------------------------------------------


def queue(table: str, clock: ManualClock, **kwargs: Any) -> BatchQueueLimits:
    options: dict[str, Any] = {
        "table": table,
        "scope": "org-test",
        "model": "text-embedding-3-small",
        "creations_per_hour": 2000,
        "enqueued_token_cap": 10_500,
        "clock": clock,
    }
    options.update(kwargs)
    return BatchQueueLimits(**options)


def test_concurrent_reservations_never_pass_the_cap_and_release_once(table: str) -> None:
    clock = ManualClock()
    workers = 24
    limits = [queue(table, clock) for _ in range(workers)]
    results: list[Acquire] = [Acquire(False, 0.0, 0)] * workers
    barrier = threading.Barrier(workers)

    def reserve(i: int) -> None:
        barrier.wait()
        results[i] = limits[i].reserve_batch(f"batch-{i}", 1000)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [i for i, r in enumerate(results) if r.granted]
    assert len(won) == 10
    assert all(r.wait_seconds == 60.0 for r in results if not r.granted)
    state = limits[0].state()
    assert state.enqueued_tokens == 10_000
    assert state.available_creations == 1990.0
    # Release every winner twice, concurrently: each gives its tokens back once.
    released: list[int] = []
    lock = threading.Lock()

    def release(i: int) -> None:
        n = limits[i].release_batch(f"batch-{i}")
        with lock:
            released.append(n)

    rel = [threading.Thread(target=release, args=(i,)) for i in won + won]
    for t in rel:
        t.start()
    for t in rel:
        t.join()
    assert sorted(released) == [0] * 10 + [1000] * 10
    assert limits[0].state().enqueued_tokens == 0
    assert limits[0].release_batch("never-reserved") == 0
    record = dynamodb.ddb().get_item(
        TableName=table,
        Key={"pk": "batchq#org-test#text-embedding-3-small", "sk": f"batch#batch-{won[0]}"},
    )["Item"]
    assert record["state"] == "released" and record["tokens"] == 1000
    assert "expires_at" in record


def test_reserve_is_idempotent_per_batch_key(table: str) -> None:
    clock = ManualClock()
    q = queue(table, clock)
    assert q.reserve_batch("job-1", 4000).granted
    assert q.reserve_batch("job-1", 4000).granted  # a Lambda retry: nothing taken twice
    assert q.state().enqueued_tokens == 4000
    assert q.state().available_creations == 1999.0
    assert q.release_batch("job-1") == 4000
    assert q.release_batch("job-1") == 0
    # A released key can hold a new reservation.
    assert q.reserve_batch("job-1", 500).granted
    assert q.state().enqueued_tokens == 500
    assert q.release_batch("job-1") == 500


def test_creations_per_hour_are_capped(table: str) -> None:
    clock = ManualClock()
    q = queue(table, clock, creations_per_hour=5, enqueued_token_cap=1_000_000)
    assert all(q.reserve_batch(f"b{i}", 10).granted for i in range(5))
    refused = q.reserve_batch("b5", 10)
    assert not refused.granted
    assert refused.wait_seconds == pytest.approx(720.0)  # one creation per 3600/5 s
    clock.now += 719.9
    assert not q.reserve_batch("b5", 10).granted
    clock.now = T0 + 720.0
    assert q.reserve_batch("b5", 10).granted
    assert q.state().enqueued_tokens == 60


def test_full_queue_waits_and_a_batch_bigger_than_the_cap_is_a_value_error(table: str) -> None:
    clock = ManualClock()
    q = queue(table, clock, enqueued_token_cap=1000, full_queue_wait_seconds=120)
    assert q.reserve_batch("a", 1000).granted
    refused = q.reserve_batch("b", 1)
    assert (refused.granted, refused.wait_seconds) == (False, 120.0)
    q.release_batch("a")
    assert q.reserve_batch("b", 1).granted
    with pytest.raises(ValueError, match="1001 tokens, more than the enqueued-token cap of 1000"):
        q.reserve_batch("c", 1001)

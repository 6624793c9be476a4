"""OpenAI's rate-limit headers read as seconds and as bounds (pure: no AWS, no server)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batch_embedder.openai.headers import parse_duration, retry_after_seconds, server_bounds

# -- parse_duration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("500us", 0.0005),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("2m", 120.0),
        ("2", 2.0),
        ("0.5", 0.5),
        (" 7ms ", 0.007),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "abc", "1x", "1s2", "-1s", "-3", "1 s", "nan", "ms"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_retry_after_prefers_milliseconds() -> None:
    assert retry_after_seconds({"Retry-After": "3", "retry-after-ms": "2812"}) == 2.812
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({}) is None


def test_server_bounds_take_the_lower_of_remaining_and_reset() -> None:
    rpm, tpm = Decimal(3000), Decimal(1_000_000)
    bounds = server_bounds(
        {"X-RateLimit-Remaining-Requests": "2999", "x-ratelimit-reset-requests": "30s",
         "x-ratelimit-remaining-tokens": "12.3456", "x-ratelimit-reset-tokens": "6m0s"},
        requests_per_minute=rpm, tokens_per_minute=tpm,
    )  # fmt: skip
    # Full again in 30 s at 50 requests/s: at most 1,500 free now, below the 2,999 remaining.
    assert bounds["requests"] == Decimal(1500)
    # A 6-minute reset belongs to a longer window: only "remaining" bounds, rounded down.
    assert bounds["tokens"] == Decimal("12.345")


def test_server_bounds_ignore_what_is_missing_or_malformed() -> None:
    bounds = server_bounds(
        {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-tokens": "soon"},
        requests_per_minute=Decimal(10), tokens_per_minute=Decimal(10),
    )  # fmt: skip
    assert bounds == {"requests": None, "tokens": None}

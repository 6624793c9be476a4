"""OpenAI's rate-limit response headers, read as seconds.

Header formats: ``docs/openai-limits.md``, "Rate limits and errors".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

__all__ = ["parse_duration", "retry_after_seconds", "server_bounds"]

_MINUTE = Decimal(60)
_MILLI = Decimal("0.001")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_DURATION_UNITS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration, as in OpenAI's ``x-ratelimit-reset-*`` headers.

    Accepts ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3.5s``, ``0s`` (units ``h``, ``m``,
    ``s``, ``ms``, ``us``/``µs``, ``ns``) and a bare number of seconds (``"2"``,
    ``"0.5"``). Header format: docs/openai-limits.md, "Rate limits and errors".

    Raises:
        ValueError: empty, negative or not a duration.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"not a non-negative duration: {text!r}")
        return seconds
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not value or position != len(value):
        raise ValueError(f"not a duration like '20ms', '1.5s' or '6m0s': {text!r}")
    return total


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 response asks to wait: ``retry-after-ms`` or else ``retry-after``.

    Header names are matched case-insensitively (docs/openai-limits.md: "on 429 also
    ``retry-after`` / ``retry-after-ms``"). Returns None when neither is a usable number of
    seconds (``retry-after`` may also be an HTTP date, which is not read).
    """
    lower = {key.lower(): value for key, value in headers.items()}
    for name, per_second in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lower.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / per_second
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def server_bounds(
    headers: Mapping[str, str], *, requests_per_minute: Decimal, tokens_per_minute: Decimal
) -> dict[str, Decimal | None]:
    """The most requests and tokens the server's rate-limit headers say are free now.

    For ``requests`` and ``tokens``: ``min(x-ratelimit-remaining-<name>, capacity * (1 -
    x-ratelimit-reset-<name> / 60 s))``, rounded down to 3 decimals. Being full again after
    ``reset`` seconds at the per-minute refill rate means at most that much is free now. A
    reset longer than 60 s belongs to a longer window and is ignored; missing or malformed
    values give no bound (None). Header names match case-insensitively
    (docs/openai-limits.md, "Rate limits and errors").

    Returns:
        ``{"requests": bound | None, "tokens": bound | None}`` (requests, tokens).
    """
    lower = {key.lower(): value for key, value in headers.items()}
    capacities = {"requests": requests_per_minute, "tokens": tokens_per_minute}
    bounds: dict[str, Decimal | None] = {}
    for name, capacity in capacities.items():
        bound: Decimal | None = None
        remaining = lower.get(f"x-ratelimit-remaining-{name}")
        if remaining is not None:
            try:
                value = Decimal(remaining.strip())
            except InvalidOperation:
                value = Decimal("NaN")
            if value.is_finite():
                bound = max(Decimal(0), value).quantize(_MILLI, rounding=ROUND_FLOOR)
        reset = lower.get(f"x-ratelimit-reset-{name}")
        if reset is not None:
            try:
                seconds = Decimal(repr(parse_duration(reset)))
            except ValueError:
                seconds = _MINUTE + 1
            if seconds <= _MINUTE:
                implied = (capacity * (1 - seconds / _MINUTE)).quantize(
                    _MILLI, rounding=ROUND_FLOOR
                )
                bound = implied if bound is None else min(bound, implied)
        bounds[name] = bound
    return bounds

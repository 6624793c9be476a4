"""Requests-per-minute and tokens-per-minute limits of the synchronous endpoint.

OpenAI advertises limits in ``x-ratelimit-*`` headers on every response and answers an
over-limit call with 429, ``retry-after`` (seconds) / ``retry-after-ms`` and a body whose
type is ``requests`` or ``tokens`` and code ``rate_limit_exceeded`` (reference file, "Rate
limits and errors"). The emulator enforces the limits over a 60-second sliding window.

``x-ratelimit-reset-*`` follow OpenAI's replenishing-bucket reading: the time until the used
part is back, ``used / limit * 60 s`` (1 request at 3,000 RPM -> ``20ms``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["RateLimitExceeded", "RateLimiter", "format_duration"]

WINDOW_SECONDS = 60.0
#: Limits advertised when enforcement is off (0): the tier-1 reference figures.
REFERENCE_RPM = 3000
REFERENCE_TPM = 1_000_000


def format_duration(seconds: float) -> str:
    """Format like OpenAI's headers (Go ``time.Duration``): ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        ms = max(1, round(seconds * 1000))
        return "1s" if ms >= 1000 else f"{ms}ms"
    ms_total = round(seconds * 1000)
    hours, rem = divmod(ms_total, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{secs}s"


@dataclass
class RateLimitExceeded:
    """Why a call was refused: ``kind`` is ``requests`` or ``tokens``; seconds to wait."""

    kind: str
    limit: int
    used: int
    requested: int
    retry_after: float | None  # None: the request can never fit (larger than the limit)


@dataclass
class RateLimitState:
    """Numbers for the ``x-ratelimit-*`` headers."""

    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int
    reset_requests: float
    reset_tokens: float

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit_requests),
            "x-ratelimit-limit-tokens": str(self.limit_tokens),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
            "x-ratelimit-reset-requests": format_duration(self.reset_requests),
            "x-ratelimit-reset-tokens": format_duration(self.reset_tokens),
        }


class RateLimiter:
    """Sliding 60-second window of (time, tokens) for accepted requests. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _purge(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - WINDOW_SECONDS:
            _, tokens = self._events.popleft()
            self._tokens -= tokens

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._tokens = 0

    def acquire(self, tokens: int, rpm: int, tpm: int) -> RateLimitExceeded | None:
        """Record one request of ``tokens`` tokens, or say why it is over the limit.

        ``rpm`` / ``tpm`` of 0 disable that limit. A refused request is not recorded.
        """
        now = time.monotonic()
        with self._lock:
            self._purge(now)
            used_req = len(self._events)
            if rpm and used_req + 1 > rpm:
                wait = self._events[0][0] + WINDOW_SECONDS - now if self._events else 0.0
                return RateLimitExceeded("requests", rpm, used_req, 1, max(wait, 0.001))
            if tpm and self._tokens + tokens > tpm:
                if tokens > tpm:
                    return RateLimitExceeded("tokens", tpm, self._tokens, tokens, None)
                freed = 0
                wait = 0.0
                for t, n in self._events:
                    freed += n
                    if self._tokens - freed + tokens <= tpm:
                        wait = t + WINDOW_SECONDS - now
                        break
                return RateLimitExceeded("tokens", tpm, self._tokens, tokens, max(wait, 0.001))
            self._events.append((now, tokens))
            self._tokens += tokens
            return None

    def state(self, rpm: int, tpm: int, override: dict[str, int] | None = None) -> RateLimitState:
        """Current header values; limits of 0 are advertised as the reference figures."""
        now = time.monotonic()
        with self._lock:
            self._purge(now)
            used_req = len(self._events)
            used_tok = self._tokens
        lim_r = rpm or REFERENCE_RPM
        lim_t = tpm or REFERENCE_TPM
        rem_r = max(0, lim_r - used_req)
        rem_t = max(0, lim_t - used_tok)
        if override:
            if "requests" in override:
                rem_r = min(rem_r, override["requests"])
            if "tokens" in override:
                rem_t = min(rem_t, override["tokens"])
        return RateLimitState(
            lim_r,
            lim_t,
            rem_r,
            rem_t,
            (lim_r - rem_r) / lim_r * WINDOW_SECONDS,
            (lim_t - rem_t) / lim_t * WINDOW_SECONDS,
        )


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up) and ``retry-after-ms`` (the SDK prefers it)."""
    whole = math.ceil(seconds) if seconds > 0 else 0
    return {"retry-after": str(whole), "retry-after-ms": str(max(0, round(seconds * 1000)))}

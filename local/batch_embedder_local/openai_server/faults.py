"""Fault switches of the emulator that outlive a single request (dev only, never deployed).

- **OpenAI outage** (``EmulatorConfig.outage_seconds``): for N seconds from the moment the
  field is set (``update_config`` / ``POST /_emulator/config``, or the initial config when
  the emulator is built or reset), every ``/v1/*`` request is refused by closing the
  connection without an HTTP answer, so the openai SDK raises ``APIConnectionError``
  (after its own retries). ``/_emulator/*`` routes keep answering; batches keep moving
  in the background, as at OpenAI; webhook deliveries wait until the outage ends, then go
  out. Setting 0 ends the outage at once. The time left is ``outage_remaining_seconds``
  in ``GET /_emulator/stats``.
- **Random errors** on ``POST /v1/embeddings`` (``error_rate_429``, ``error_rate_5xx``,
  ``error_seed``): one ``random.Random(error_seed)`` draw per call, ``u < error_rate_429``
  -> 429 ``rate_limit_exceeded`` with ``retry-after: retry_after_seconds``; else
  ``u < error_rate_429 + error_rate_5xx`` -> 500 ``server_error``. No draw is made while
  both rates are 0. The generator is re-seeded whenever one of the three fields is set.
- The per-call faults that were already there (``insufficient_quota``,
  ``fail_next_requests_429`` / ``_5xx``) are checked first, in that order.
- **File expiry** parameters: :func:`parse_expires_after` checks the ``expires_after`` /
  ``output_expires_after`` objects (``{"anchor": "created_at", "seconds": N}``).

Faults answer before any token is counted or rate-limited: nothing is billed for them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config import EmulatorConfig
from .errors import APIError, invalid_value
from .ratelimit import format_duration, retry_after_headers
from .stats import Stats

__all__ = ["Faults", "form_expires_after", "parse_expires_after"]

#: Fields whose setting re-seeds the random error generator.
RNG_FIELDS = frozenset({"error_seed", "error_rate_429", "error_rate_5xx"})


class Faults:
    """Outage clock and random-error generator of one emulator. Thread-safe.

    Args:
        stats: the emulator's counters (``rate_limited``, ``server_errors``,
            ``outage_refused`` are added here).
    """

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._lock = threading.Lock()
        self._outage_until = 0.0  # time.monotonic() seconds; 0 = no outage
        self._rng = random.Random(0)

    def configure(self, config: EmulatorConfig, changed: Iterable[str]) -> None:
        """Apply the fields named in ``changed`` that were just set to ``config``'s values:
        ``outage_seconds`` (re)starts or ends the outage, the ``error_*`` fields re-seed."""
        names = set(changed)
        with self._lock:
            if "outage_seconds" in names:
                seconds = config.outage_seconds
                self._outage_until = time.monotonic() + seconds if seconds > 0 else 0.0
            if names & RNG_FIELDS:
                self._rng = random.Random(config.error_seed)

    def outage_left(self) -> float:
        """Seconds left of the current outage (0.0 when there is none)."""
        with self._lock:
            if not self._outage_until:
                return 0.0
            left = self._outage_until - time.monotonic()
            if left <= 0:
                self._outage_until = 0.0
                return 0.0
            return left

    def refuse(self) -> bool:
        """True (and counted in ``outage_refused``) if a ``/v1`` request must be refused."""
        if self.outage_left() <= 0:
            return False
        self._stats.add(outage_refused=1)
        return True

    def _draw(self, config: EmulatorConfig) -> str | None:
        """``"429"``, ``"5xx"`` or None for one call, per the configured rates."""
        if config.error_rate_429 <= 0 and config.error_rate_5xx <= 0:
            return None
        with self._lock:
            u = self._rng.random()
        if u < config.error_rate_429:
            return "429"
        if u < config.error_rate_429 + config.error_rate_5xx:
            return "5xx"
        return None

    def check_embeddings(
        self, config: EmulatorConfig, model: str, take_fault: Callable[[str], bool]
    ) -> None:
        """Raise the injected error for one ``POST /v1/embeddings`` call, if any.

        Args:
            config: the current config.
            model: the requested model name (for the 429 message).
            take_fault: consumes one unit of a ``fail_next_requests_*`` counter; True if
                one was left (``OpenAIEmulator.take_fault``).

        Raises:
            APIError: 429 ``insufficient_quota``, 429 ``rate_limit_exceeded`` or 500.
        """
        if config.insufficient_quota:
            raise APIError(
                429,
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                type_="insufficient_quota",
                code="insufficient_quota",
            )
        if take_fault("fail_next_requests_429"):
            raise self._rate_limited(config, model, "fail_next_requests_429")
        if take_fault("fail_next_requests_5xx"):
            raise self._server_error("fail_next_requests_5xx")
        drawn = self._draw(config)
        if drawn == "429":
            raise self._rate_limited(config, model, "error_rate_429")
        if drawn == "5xx":
            raise self._server_error("error_rate_5xx")

    def _rate_limited(self, config: EmulatorConfig, model: str, why: str) -> APIError:
        self._stats.add(rate_limited=1)
        wait = config.retry_after_seconds
        limit = config.rpm_limit or 3000
        return APIError(
            429,
            f"Rate limit reached for {model} in organization org-local-emulator on requests "
            f"per min (RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in "
            f"{format_duration(wait)}. Visit https://platform.openai.com/account/rate-limits "
            f"to learn more. (emulated: {why})",
            type_="requests",
            code="rate_limit_exceeded",
            headers=retry_after_headers(wait),
        )

    def _server_error(self, why: str) -> APIError:
        self._stats.add(server_errors=1)
        return APIError(
            500,
            "The server had an error while processing your request. Sorry about that! "
            f"(emulated: {why})",
            type_="server_error",
        )


def parse_expires_after(value: Any, param: str, config: EmulatorConfig) -> int | None:
    """Check an ``expires_after`` / ``output_expires_after`` object; return its seconds.

    Args:
        value: ``{"anchor": "created_at", "seconds": N}`` (N an int, or a decimal string
            as multipart form fields carry it), or None when the parameter was not sent.
        param: the parameter name, for error messages.
        config: gives the accepted range, ``file_expiry_min_seconds`` ..
            ``file_expiry_max_seconds`` (OpenAI: 3600 .. 2592000).

    Returns:
        The lifetime in seconds counted from the file's ``created_at``, or None.

    Raises:
        APIError: 400 for a malformed object, another anchor or seconds out of range.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise APIError(400, f"Invalid type for '{param}': expected an object.", param=param)
    anchor = value.get("anchor")
    if anchor is None:
        raise APIError(
            400,
            f"Missing required parameter: '{param}.anchor'.",
            param=f"{param}.anchor",
            code="missing_required_parameter",
        )
    if anchor != "created_at":
        raise invalid_value(f"{param}.anchor", str(anchor), ("created_at",))
    raw = value.get("seconds")
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        raw = int(raw)
    if raw is None:
        raise APIError(
            400,
            f"Missing required parameter: '{param}.seconds'.",
            param=f"{param}.seconds",
            code="missing_required_parameter",
        )
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise APIError(
            400,
            f"Invalid type for '{param}.seconds': expected an integer.",
            param=f"{param}.seconds",
            code="invalid_type",
        )
    lo, hi = config.file_expiry_min_seconds, config.file_expiry_max_seconds
    if not lo <= raw <= hi:
        raise APIError(
            400,
            f"Invalid '{param}.seconds': integer out of range. Expected a value between {lo} "
            f"and {hi}, but got {raw} instead.",
            param=f"{param}.seconds",
            code="integer_out_of_range",
        )
    return raw


def form_expires_after(form: Mapping[str, Any], config: EmulatorConfig) -> int | None:
    """Seconds of the ``expires_after`` of a ``POST /v1/files`` form, or None if absent.

    The openai SDK sends the object as the form fields ``expires_after[anchor]`` and
    ``expires_after[seconds]`` (``form``: field name -> value, as Starlette's
    ``request.form()`` gives them); checked by :func:`parse_expires_after`.
    """
    fields = {
        key: str(form[name]).strip()
        for key in ("anchor", "seconds")
        if (name := f"expires_after[{key}]") in form
    }
    return parse_expires_after(fields or None, "expires_after", config)

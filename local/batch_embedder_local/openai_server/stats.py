"""Counters the emulator exposes at ``GET /_emulator/stats`` (and ``OpenAIEmulator.stats()``).

Keys of the snapshot (tokens are cl100k_base tokens; only completed requests bill, so a
429, 5xx, 401 or a connection refused by an outage bills nothing):

- ``billed_tokens``: ``billed_sync_tokens + billed_batch_tokens``.
- ``billed_sync_tokens`` / ``billed_batch_tokens``: tokens billed by ``POST
  /v1/embeddings`` answered 200 / by completed batch requests (in an output file).
- ``sync_billed_tokens`` / ``batch_billed_tokens``: the same two figures under their
  older names (kept for existing tests).
- ``embedding_requests``: ``sync_requests + batch_requests``; ``embedding_inputs``: the
  inputs embedded by them.
- ``sync_requests``: ``POST /v1/embeddings`` answered 200 (billed).
- ``batch_requests``: batch requests completed (billed; failed, expired and never-run
  ones are not counted).
- ``api_requests``: every ``/v1/*`` request received, whatever its answer (including the
  ones an outage refused).
- ``batches_created``: successful ``POST /v1/batches``.
- ``files``: files currently stored (expired ones are not counted: they are deleted).
- ``rate_limited``: 429 ``rate_limit_exceeded`` answers (real and injected).
- ``server_errors``: injected 500 answers of ``POST /v1/embeddings``.
- ``unauthorized``: 401 answers (missing or wrong API key).
- ``outage_refused``: ``/v1/*`` connections closed without an answer by ``outage_seconds``.
- ``outage_remaining_seconds``: seconds (float, 3 decimals) left of the current outage;
  0 when there is none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["Stats"]


@dataclass
class Stats:
    """Thread-safe counters (meaning of each: the module docstring)."""

    sync_requests: int = 0
    batch_requests: int = 0
    embedding_inputs: int = 0
    sync_billed_tokens: int = 0
    batch_billed_tokens: int = 0
    api_requests: int = 0
    batches_created: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    unauthorized: int = 0
    outage_refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Add to counters by name (``add(sync_requests=1, sync_billed_tokens=12)``)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def reset(self) -> None:
        """Set every counter to 0."""
        with self._lock:
            for name in self._names():
                setattr(self, name, 0)

    def _names(self) -> list[str]:
        return [k for k in vars(self) if not k.startswith("_")]

    def snapshot(self, files: int, outage_remaining_seconds: float = 0.0) -> dict[str, int | float]:
        """The ``GET /_emulator/stats`` object (keys: the module docstring)."""
        with self._lock:
            d = {k: getattr(self, k) for k in self._names()}
        sync, batch = d["sync_billed_tokens"], d["batch_billed_tokens"]
        return {
            "embedding_requests": d["sync_requests"] + d["batch_requests"],
            "embedding_inputs": d["embedding_inputs"],
            "billed_tokens": sync + batch,
            "batch_billed_tokens": batch,
            "sync_billed_tokens": sync,
            "billed_sync_tokens": sync,
            "billed_batch_tokens": batch,
            "sync_requests": d["sync_requests"],
            "batch_requests": d["batch_requests"],
            "api_requests": d["api_requests"],
            "batches_created": d["batches_created"],
            "files": files,
            "rate_limited": d["rate_limited"],
            "server_errors": d["server_errors"],
            "unauthorized": d["unauthorized"],
            "outage_refused": d["outage_refused"],
            "outage_remaining_seconds": round(outage_remaining_seconds, 3),
        }

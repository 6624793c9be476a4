"""Counters the emulator exposes at ``GET /_emulator/stats`` (and ``OpenAIEmulator.stats()``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["Stats"]


@dataclass
class Stats:
    """Thread-safe counters. Tokens are cl100k_base tokens; only completed requests bill.

    Attributes:
        embedding_requests: embeddings requests answered 200 (sync) or completed (batch).
        embedding_inputs: inputs embedded by those requests.
        sync_billed_tokens / batch_billed_tokens: tokens billed on each path;
            ``billed_tokens`` is their sum.
        batches_created: successful ``POST /v1/batches``.
        rate_limited: 429 ``rate_limit_exceeded`` answers (real and injected).
    """

    embedding_requests: int = 0
    embedding_inputs: int = 0
    sync_billed_tokens: int = 0
    batch_billed_tokens: int = 0
    batches_created: int = 0
    rate_limited: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def reset(self) -> None:
        with self._lock:
            self.embedding_requests = self.embedding_inputs = 0
            self.sync_billed_tokens = self.batch_billed_tokens = 0
            self.batches_created = self.rate_limited = 0

    def snapshot(self, files: int) -> dict[str, int]:
        with self._lock:
            data = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {
            "embedding_requests": data["embedding_requests"],
            "embedding_inputs": data["embedding_inputs"],
            "billed_tokens": data["sync_billed_tokens"] + data["batch_billed_tokens"],
            "batch_billed_tokens": data["batch_billed_tokens"],
            "sync_billed_tokens": data["sync_billed_tokens"],
            "batches_created": data["batches_created"],
            "files": files,
            "rate_limited": data["rate_limited"],
        }

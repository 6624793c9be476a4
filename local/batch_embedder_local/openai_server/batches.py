"""Batch API emulation: the manager that creates batches and moves them through their lifecycle.

Contract (``docs/openai-limits.md``, "Batch API"; field list from the openai SDK's
``Batch`` type, served by :meth:`.batch_records.BatchRecord.to_model`):

- ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``; ``failed`` when the
  input file does not validate (``errors.data[]`` with ``code``, ``line``, ``message``,
  ``param``; see :mod:`.batch_validate`); ``expired`` (completed requests returned and
  billed, the others in the error file with ``batch_expired``); ``cancelling`` ->
  ``cancelled`` (by ``POST /v1/batches/{id}/cancel``, or by ``batch_outcome="cancelled"``:
  the first ``expire_completed_fraction`` of requests complete and are billed, the rest
  appear in neither file).
- ``output_expires_after`` (``{"anchor": "created_at", "seconds": N}``) gives the output
  and error files ``expires_at = their created_at + N``.
- Output / error lines are in no particular order (shuffled here, seeded): clients must
  match them by ``custom_id``. ``token_limit_exceeded`` and ``emulated_failure`` are the
  emulator's failure codes for the enqueued-token cap and ``batch_outcome="failed"``.

Each batch runs in its own thread (so phase timers of several batches overlap); the
embedding work itself is limited to ``config.batch_workers`` batches at a time. Output is
written line by line to a spool file and only the line offsets stay in memory, so a 200 MB
batch never becomes one string.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .batch_records import (
    TERMINAL,
    Abandoned,
    BatchRecord,
    Plan,
    Spool,
    line_error,
    now,
    run_requests,
)
from .batch_validate import check_create_params, validate_input
from .config import EmulatorConfig
from .errors import APIError, new_id
from .stats import Stats
from .store import FileStore

__all__ = ["BatchManager", "BatchRecord"]


class BatchManager:
    """Creates, lists, cancels and runs batches. Thread-safe."""

    def __init__(
        self,
        files: FileStore,
        get_config: Callable[[], EmulatorConfig],
        stats: Stats,
        on_terminal: Callable[[str, str, int], None] | None = None,
    ) -> None:
        """``on_terminal(batch_id, status, unix_seconds)`` is called from the batch's worker
        thread once it reaches a terminal status (not when abandoned by reset / stop); it
        must return quickly (the webhook sender only schedules a delivery)."""
        self._files = files
        self._get_config = get_config
        self._stats = stats
        self._on_terminal = on_terminal
        self._lock = threading.Lock()
        self._batches: dict[str, BatchRecord] = {}
        self._order: list[str] = []
        self._compute = threading.Condition()
        self._computing = 0

    # --- API -------------------------------------------------------------------------------

    def create(
        self, params: Any, *, deployments: dict[str, str] | None = None, azure: bool = False
    ) -> BatchRecord:
        """Validate ``POST /v1/batches`` parameters and start the batch.

        Args:
            params: the JSON body.
            deployments: Azure deployment -> model map applied to the lines' ``model``
                (None: OpenAI, the model names are used as they are).
            azure: the request came through Azure's routes (``/embeddings`` accepted).

        Raises:
            APIError: 400 for a bad parameter, 404 for an unknown input file.
        """
        cfg = self._get_config()
        checked = check_create_params(params, self._files, cfg, azure=azure)
        created = now()
        batch = BatchRecord(
            id=new_id("batch_"),
            endpoint=checked.endpoint,
            input_file_id=checked.input_file_id,
            completion_window=checked.completion_window,
            metadata=checked.metadata,
            created_at=created,
            expires_at=created + cfg.batch_completion_window_seconds,
            config=cfg,
            output_expires_after=checked.output_expires_after,
            deployments=deployments,
        )
        thread = threading.Thread(
            target=self._run, args=(batch,), name=f"emulator-{batch.id}", daemon=True
        )
        batch.thread = thread
        with self._lock:
            self._batches[batch.id] = batch
            self._order.append(batch.id)
        self._stats.add(batches_created=1)
        thread.start()
        return batch

    def get(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            return self._batches.get(batch_id)

    def list_batches(self) -> list[BatchRecord]:
        """All batches, newest first."""
        with self._lock:
            return [self._batches[i] for i in reversed(self._order)]

    def cancel(self, batch_id: str) -> BatchRecord:
        """Move a batch to ``cancelling`` (idempotent for cancelling / cancelled ones).

        Raises:
            APIError: 404 unknown batch; 400 if it already completed, failed or expired.
        """
        batch = self.get(batch_id)
        if batch is None:
            raise APIError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        with batch.lock:
            if batch.status in ("completed", "failed", "expired"):
                raise APIError(
                    400,
                    f"Cannot cancel a batch with status '{batch.status}'.",
                    code="batch_not_cancellable",
                )
            if batch.status not in ("cancelling", "cancelled"):
                batch.status = "cancelling"
                batch.cancelling_at = now()
                batch.cancel_started = time.monotonic()
                batch.cancel_event.set()
        return batch

    def clear(self, timeout: float = 30.0) -> None:
        """Stop every running batch and forget all batches (files are the store's job)."""
        with self._lock:
            batches = list(self._batches.values())
            self._batches.clear()
            self._order.clear()
        for b in batches:
            b.abandoned = True
            b.cancel_event.set()
        deadline = time.monotonic() + timeout
        for b in batches:
            if b.thread is not None and b.thread is not threading.current_thread():
                b.thread.join(max(0.0, deadline - time.monotonic()))

    def enqueued_tokens(self, exclude: str) -> int:
        """Tokens of validated, unfinished batches (for ``batch_enqueued_token_limit``)."""
        with self._lock:
            batches = list(self._batches.values())
        total = 0
        for b in batches:
            if b.id != exclude and b.status in ("in_progress", "finalizing"):
                total += b.enqueued_tokens
        return total

    # --- worker ----------------------------------------------------------------------------

    def _wait(self, batch: BatchRecord, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the batch got cancelled (or abandoned) meanwhile."""
        if seconds > 0:
            batch.cancel_event.wait(seconds)
        if batch.abandoned:
            raise Abandoned
        return batch.cancel_event.is_set()

    def _run(self, batch: BatchRecord) -> None:
        try:
            self._run_inner(batch)
        except Abandoned:
            return
        except Exception as exc:  # pragma: no cover - a bug in the emulator
            with batch.lock:
                batch.status = "failed"
                batch.failed_at = now()
                batch.errors = [line_error("server_error", f"emulator error: {exc!r}", None)]
        self._notify_terminal(batch)

    def _notify_terminal(self, batch: BatchRecord) -> None:
        """Report the terminal status to ``on_terminal`` (the webhook sender)."""
        with batch.lock:
            status = batch.status
            at = {
                "completed": batch.completed_at,
                "failed": batch.failed_at,
                "expired": batch.expired_at,
                "cancelled": batch.cancelled_at,
            }.get(status)
        if self._on_terminal is None or status not in TERMINAL or batch.abandoned:
            return
        self._on_terminal(batch.id, status, at if at is not None else now())

    def _fail(self, batch: BatchRecord, errors: list[dict[str, Any]]) -> None:
        with batch.lock:
            batch.status = "failed"
            batch.failed_at = now()
            batch.errors = errors

    def _finish_cancel(self, batch: BatchRecord, spools: tuple[Spool, Spool] | None = None) -> None:
        cfg = batch.config
        left = cfg.batch_cancel_seconds - (time.monotonic() - batch.cancel_started)
        if left > 0:
            time.sleep(left)
        if batch.abandoned:
            raise Abandoned
        out_id = err_id = None
        if spools is not None:
            out_id, err_id = self._publish(batch, *spools)
        with batch.lock:
            batch.output_file_id = out_id
            batch.error_file_id = err_id
            batch.status = "cancelled"
            batch.cancelled_at = now()

    def _run_inner(self, batch: BatchRecord) -> None:
        cfg = batch.config
        if self._wait(batch, cfg.batch_validating_seconds):
            self._finish_cancel(batch)
            return
        if cfg.batch_outcome == "failed":
            self._fail(
                batch,
                [
                    line_error(
                        "emulated_failure",
                        "Batch failed because the emulator was configured with "
                        "batch_outcome='failed'.",
                        None,
                    )
                ],
            )
            return
        stored = self._files.get(batch.input_file_id)
        if stored is None:
            self._fail(
                batch,
                [line_error("file_not_found", "The input file was deleted.", None)],
            )
            return
        plans, model, errors = validate_input(batch, stored.path, cfg)
        if errors:
            with batch.lock:
                batch.model = model
            self._fail(batch, errors)
            return
        tokens = sum(p.tokens for p in plans)
        if cfg.batch_enqueued_token_limit:
            queued = self.enqueued_tokens(batch.id)
            if queued + tokens > cfg.batch_enqueued_token_limit:
                with batch.lock:
                    batch.model = model
                self._fail(
                    batch,
                    [
                        line_error(
                            "token_limit_exceeded",
                            f"Enqueued token limit reached for {model} in organization "
                            f"org-local-emulator. Limit: {cfg.batch_enqueued_token_limit:,} "
                            "enqueued tokens. Please try submitting your batch again later.",
                            None,
                        )
                    ],
                )
                return
        batch.enqueued_tokens = tokens
        with batch.lock:
            if batch.cancel_event.is_set():
                pass
            else:
                batch.model = model
                batch.status = "in_progress"
                batch.in_progress_at = now()
                batch.total = len(plans)
        if batch.cancel_event.is_set():
            if batch.abandoned:
                raise Abandoned
            self._finish_cancel(batch)
            return
        spools = self._process(batch, stored.path, plans)
        if spools is None:  # cancelled before computing anything
            self._finish_cancel(batch)
            return
        if batch.cancel_event.is_set():
            self._finish_cancel(batch, spools)
            return
        # The phase lasts its configured time on top of the work.
        if self._wait(batch, cfg.batch_in_progress_seconds):
            self._finish_cancel(batch, spools)
            return
        if cfg.batch_outcome == "cancelled":  # as if cancelled from outside, mid-way
            with batch.lock:
                batch.status, batch.cancelling_at = "cancelling", now()
            batch.cancel_started = time.monotonic()
            self._finish_cancel(batch, spools)
            return
        if cfg.batch_outcome == "expired":
            out_id, err_id = self._publish(batch, *spools)
            with batch.lock:
                batch.output_file_id, batch.error_file_id = out_id, err_id
                batch.status = "expired"
                batch.expired_at = now()
            return
        with batch.lock:
            if batch.cancel_event.is_set():
                pass
            else:
                batch.status = "finalizing"
                batch.finalizing_at = now()
        if self._wait(batch, cfg.batch_finalizing_seconds):
            self._finish_cancel(batch, spools)
            return
        out_id, err_id = self._publish(batch, *spools)
        with batch.lock:
            if batch.status == "cancelling":
                # Cancelled while the files were written: the work is done, report it.
                batch.status = "cancelled"
                batch.cancelled_at = now()
            else:
                batch.status = "completed"
                batch.completed_at = now()
            batch.output_file_id, batch.error_file_id = out_id, err_id

    def _acquire_compute(self, batch: BatchRecord) -> bool:
        """Wait for a compute slot (``config.batch_workers``, read live). False if cancelled."""
        with self._compute:
            while self._computing >= self._get_config().batch_workers:
                if batch.abandoned:
                    raise Abandoned
                if batch.cancel_event.is_set():
                    return False
                self._compute.wait(0.05)
            self._computing += 1
        return True

    def _release_compute(self) -> None:
        with self._compute:
            self._computing -= 1
            self._compute.notify_all()

    def _process(
        self, batch: BatchRecord, path: Path, plans: list[Plan]
    ) -> tuple[Spool, Spool] | None:
        """Run the requests (:func:`.batch_records.run_requests`) in a compute slot.
        None if cancelled before a slot was free."""
        if not self._acquire_compute(batch):
            return None
        try:
            return run_requests(batch, path, plans, self._stats, self._files.new_tmp_path)
        finally:
            self._release_compute()

    def _publish(
        self, batch: BatchRecord, out: Spool, errf: Spool
    ) -> tuple[str | None, str | None]:
        """Turn the spools into stored files; ids are None for empty ones."""
        cfg = batch.config
        ids: list[str | None] = []
        for spool, kind, salt in ((out, "output", 0), (errf, "error", 1)):
            if spool.lines == 0:
                spool.discard()
                ids.append(None)
                continue
            dest = self._files.new_tmp_path(f".{kind}")
            spool.finish(dest, cfg.shuffle_output, cfg.shuffle_seed * 2 + salt)
            name = f"{batch.id}_{kind}.jsonl"
            stored = self._files.adopt(dest, name, "batch_output", batch.output_expires_after)
            ids.append(stored.id)
        return ids[0], ids[1]

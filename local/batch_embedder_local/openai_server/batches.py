"""Batch API emulation: batch objects and the worker that moves them through their lifecycle.

Contract (``docs/openai-limits.md``, "Batch API"; field list from the
openai SDK 3.54 ``Batch`` type):

- ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``; ``failed`` when the
  input file does not validate (``errors.data[]`` with ``code``, ``line``, ``message``,
  ``param``); ``expired`` (completed requests returned and billed, the others in the
  error file with ``batch_expired``); ``cancelling`` -> ``cancelled`` (by
  ``POST /v1/batches/{id}/cancel``, or by ``batch_outcome="cancelled"``: the first
  ``expire_completed_fraction`` of requests complete and are billed, the rest appear in
  neither file).
- ``output_expires_after`` (``{"anchor": "created_at", "seconds": N}``) gives the output
  and error files ``expires_at = their created_at + N``.
- Input: one JSON object per line with ``custom_id`` (unique), ``method`` ``POST``,
  ``url`` equal to the batch endpoint, ``body`` an embeddings request; one model per file;
  at most 50,000 requests and 50,000 embedding inputs; each request within the
  ``/v1/embeddings`` limits (else the whole batch fails validation, as configured here).
- Output / error lines are in no particular order (shuffled here, seeded): clients must
  match them by ``custom_id``.

Error codes ``invalid_json_line``, ``duplicate_custom_id``, ``url_mismatch``,
``model_mismatch``, ``empty_file``, ``too_many_tasks`` are the ones OpenAI documents;
``missing_required_parameter``, ``invalid_method``, ``model_not_found``,
``too_many_inputs``, ``context_length_exceeded``, ``max_tokens_per_request``,
``token_limit_exceeded`` and ``emulated_failure`` are the emulator's (or reported) names.

Each batch runs in its own thread (so phase timers of several batches overlap); the
embedding work itself is limited to ``config.batch_workers`` batches at a time. Output is
written line by line to a spool file and only the line offsets stay in memory, so a 200 MB
batch never becomes one string.
"""

from __future__ import annotations

import json
import math
import mmap
import random
import re
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import EmulatorConfig
from .embedding_api import parse_embedding_body, render_embedding_response
from .errors import APIError, error_body, invalid_value, new_id
from .faults import parse_expires_after
from .stats import Stats
from .store import FileStore

__all__ = ["BatchManager", "BatchRecord"]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
SUPPORTED_ENDPOINTS = ("/v1/embeddings",)
#: Endpoints the real Batch API accepts; the emulator answers 400 for all but embeddings.
KNOWN_ENDPOINTS = (
    "/v1/embeddings",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/moderations",
)
#: Metadata limits (reference: "Metadata: up to 16 keys, keys <= 64 chars, values <= 512").
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
#: Validation stops collecting after this many line errors.
MAX_REPORTED_ERRORS = 100


@dataclass
class _Plan:
    """One input line as remembered between validation and processing."""

    offset: int
    length: int
    custom_id: str
    tokens: int
    inputs: int
    error: APIError | None = None


@dataclass
class BatchRecord:
    """State of one batch; serialised with :meth:`to_json` into the SDK's ``Batch`` shape."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    config: EmulatorConfig
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    enqueued_tokens: int = 0
    output_expires_after: int | None = None  # seconds, for the output / error files
    cancel_event: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    cancel_started: float = 0.0
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.id,
                "object": "batch",
                "endpoint": self.endpoint,
                "model": self.model,
                "errors": (
                    {"object": "list", "data": list(self.errors)}
                    if self.errors is not None
                    else None
                ),
                "input_file_id": self.input_file_id,
                "completion_window": self.completion_window,
                "status": self.status,
                "output_file_id": self.output_file_id,
                "error_file_id": self.error_file_id,
                "created_at": self.created_at,
                "in_progress_at": self.in_progress_at,
                "expires_at": self.expires_at,
                "finalizing_at": self.finalizing_at,
                "completed_at": self.completed_at,
                "failed_at": self.failed_at,
                "expired_at": self.expired_at,
                "cancelling_at": self.cancelling_at,
                "cancelled_at": self.cancelled_at,
                "request_counts": {
                    "total": self.total,
                    "completed": self.completed,
                    "failed": self.failed,
                },
                "usage": {
                    "input_tokens": self.input_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 0,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": self.input_tokens,
                },
                "metadata": dict(self.metadata) if self.metadata is not None else None,
            }


class _Abandoned(Exception):
    """The emulator was reset or stopped while the batch ran."""


class _Spool:
    """Append-only line file that remembers line offsets (for an out-of-core shuffle)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self._offsets = array("q", [0])

    @property
    def lines(self) -> int:
        return len(self._offsets) - 1

    def write(self, line: str) -> None:
        data = line.encode("utf-8") + b"\n"
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def finish(self, dest: Path, shuffle: bool, seed: int) -> None:
        """Close and write the lines to ``dest``, in a seeded random order if ``shuffle``."""
        self._fh.close()
        n = self.lines
        if not shuffle or n < 2:
            self.path.replace(dest)
            return
        order = list(range(n))
        random.Random(seed).shuffle(order)
        offs = self._offsets
        with (
            self.path.open("rb") as fin,
            mmap.mmap(fin.fileno(), 0, access=mmap.ACCESS_READ) as mm,
            dest.open("wb", buffering=1 << 20) as fout,
        ):
            for i in order:
                fout.write(mm[offs[i] : offs[i + 1]])
        self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def _now() -> int:
    return int(time.time())


def _line_error(
    code: str, message: str, line: int | None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


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

    def create(self, params: Any) -> BatchRecord:
        """Validate ``POST /v1/batches`` parameters and start the batch.

        Raises:
            APIError: 400 for a bad parameter, 404 for an unknown input file.
        """
        if not isinstance(params, dict):
            raise APIError(400, "We could not parse the JSON body of your request.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if params.get(name) in (None, ""):
                raise APIError(
                    400,
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )
        endpoint = params["endpoint"]
        if endpoint not in KNOWN_ENDPOINTS:
            raise invalid_value("endpoint", endpoint, KNOWN_ENDPOINTS)
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise APIError(
                400,
                f"The local emulator only supports /v1/embeddings batches, not {endpoint}.",
                param="endpoint",
                code="unsupported_value",
            )
        window = params["completion_window"]
        if window != "24h":
            raise APIError(
                400,
                f"Invalid value: '{window}'. Supported values are: '24h'.",
                param="completion_window",
                code="invalid_value",
            )
        metadata = params.get("metadata")
        self._check_metadata(metadata)
        file_id = params["input_file_id"]
        stored = self._files.get(file_id) if isinstance(file_id, str) else None
        if stored is None:
            raise APIError(404, f"No such File object: {file_id}", param="input_file_id")
        if stored.purpose != "batch":
            raise APIError(
                400,
                f"Invalid 'input_file_id': '{file_id}'. The file must have purpose 'batch', "
                f"not '{stored.purpose}'.",
                param="input_file_id",
                code="invalid_value",
            )
        cfg = self._get_config()
        output_expiry = parse_expires_after(
            params.get("output_expires_after"), "output_expires_after", cfg
        )
        now = _now()
        batch = BatchRecord(
            id=new_id("batch_"),
            endpoint=endpoint,
            input_file_id=file_id,
            completion_window=window,
            metadata=dict(metadata) if metadata is not None else None,
            created_at=now,
            expires_at=now + cfg.batch_completion_window_seconds,
            config=cfg,
            output_expires_after=output_expiry,
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

    @staticmethod
    def _check_metadata(metadata: Any) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            raise APIError(
                400, "Invalid type for 'metadata': expected an object.", param="metadata"
            )
        if len(metadata) > METADATA_MAX_KEYS:
            raise APIError(
                400,
                f"Invalid 'metadata': too many properties. Expected an object with at most "
                f"{METADATA_MAX_KEYS} properties, but got an object with {len(metadata)} "
                "properties instead.",
                param="metadata",
                code="object_above_max_properties",
            )
        for key, value in metadata.items():
            if len(key) > METADATA_MAX_KEY_CHARS:
                raise APIError(
                    400,
                    f"Invalid 'metadata': key '{key[:80]}' is longer than "
                    f"{METADATA_MAX_KEY_CHARS} characters.",
                    param="metadata",
                    code="invalid_value",
                )
            if not isinstance(value, str):
                raise APIError(
                    400,
                    f"Invalid type for 'metadata.{key}': expected a string.",
                    param=f"metadata.{key}",
                    code="invalid_type",
                )
            if len(value) > METADATA_MAX_VALUE_CHARS:
                raise APIError(
                    400,
                    f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                    f"length {METADATA_MAX_VALUE_CHARS}, but got a string with length "
                    f"{len(value)} instead.",
                    param=f"metadata.{key}",
                    code="string_above_max_length",
                )

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
                batch.cancelling_at = _now()
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
            raise _Abandoned
        return batch.cancel_event.is_set()

    def _run(self, batch: BatchRecord) -> None:
        try:
            self._run_inner(batch)
        except _Abandoned:
            return
        except Exception as exc:  # pragma: no cover - a bug in the emulator
            with batch.lock:
                batch.status = "failed"
                batch.failed_at = _now()
                batch.errors = [_line_error("server_error", f"emulator error: {exc!r}", None)]
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
        self._on_terminal(batch.id, status, at if at is not None else _now())

    def _fail(self, batch: BatchRecord, errors: list[dict[str, Any]]) -> None:
        with batch.lock:
            batch.status = "failed"
            batch.failed_at = _now()
            batch.errors = errors

    def _finish_cancel(
        self, batch: BatchRecord, spools: tuple[_Spool, _Spool] | None = None
    ) -> None:
        cfg = batch.config
        left = cfg.batch_cancel_seconds - (time.monotonic() - batch.cancel_started)
        if left > 0:
            time.sleep(left)
        if batch.abandoned:
            raise _Abandoned
        out_id = err_id = None
        if spools is not None:
            out_id, err_id = self._publish(batch, *spools)
        with batch.lock:
            batch.output_file_id = out_id
            batch.error_file_id = err_id
            batch.status = "cancelled"
            batch.cancelled_at = _now()

    def _run_inner(self, batch: BatchRecord) -> None:
        cfg = batch.config
        if self._wait(batch, cfg.batch_validating_seconds):
            self._finish_cancel(batch)
            return
        if cfg.batch_outcome == "failed":
            self._fail(
                batch,
                [
                    _line_error(
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
                [_line_error("file_not_found", "The input file was deleted.", None)],
            )
            return
        plans, model, errors = self._validate(batch, stored.path, cfg)
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
                        _line_error(
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
                batch.in_progress_at = _now()
                batch.total = len(plans)
        if batch.cancel_event.is_set():
            if batch.abandoned:
                raise _Abandoned
            self._finish_cancel(batch)
            return
        spools = self._process(batch, stored.path, plans, cfg)
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
                batch.status, batch.cancelling_at = "cancelling", _now()
            batch.cancel_started = time.monotonic()
            self._finish_cancel(batch, spools)
            return
        if cfg.batch_outcome == "expired":
            out_id, err_id = self._publish(batch, *spools)
            with batch.lock:
                batch.output_file_id, batch.error_file_id = out_id, err_id
                batch.status = "expired"
                batch.expired_at = _now()
            return
        with batch.lock:
            if batch.cancel_event.is_set():
                pass
            else:
                batch.status = "finalizing"
                batch.finalizing_at = _now()
        if self._wait(batch, cfg.batch_finalizing_seconds):
            self._finish_cancel(batch, spools)
            return
        out_id, err_id = self._publish(batch, *spools)
        with batch.lock:
            if batch.status == "cancelling":
                # Cancelled while the files were written: the work is done, report it.
                batch.status = "cancelled"
                batch.cancelled_at = _now()
            else:
                batch.status = "completed"
                batch.completed_at = _now()
            batch.output_file_id, batch.error_file_id = out_id, err_id

    def _validate(
        self, batch: BatchRecord, path: Path, cfg: EmulatorConfig
    ) -> tuple[list[_Plan], str | None, list[dict[str, Any]]]:
        """Read the input file once; return the line plans, the model and any errors."""
        plans: list[_Plan] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        model: str | None = None
        total_inputs = 0
        offset = 0
        lineno = 0

        def err(code: str, message: str, line: int | None, param: str | None = None) -> None:
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(_line_error(code, message, line, param))

        with path.open("rb") as fh:
            for raw in fh:
                lineno += 1
                start, offset = offset, offset + len(raw)
                if batch.abandoned:
                    raise _Abandoned
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError:
                    err("invalid_json_line", "This line is not parseable as valid JSON.", lineno)
                    continue
                if not isinstance(obj, dict):
                    err("invalid_json_line", "This line is not a JSON object.", lineno)
                    continue
                custom_id = obj.get("custom_id")
                if not isinstance(custom_id, str) or not custom_id:
                    err(
                        "missing_required_parameter",
                        "Missing required parameter: 'custom_id'.",
                        lineno,
                        "custom_id",
                    )
                    continue
                if custom_id in seen:
                    err(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another request. "
                        "The custom_id parameter must be unique for each request in a batch.",
                        lineno,
                        "custom_id",
                    )
                    continue
                seen.add(custom_id)
                if obj.get("method") != "POST":
                    err(
                        "invalid_method",
                        "The method for this request must be 'POST'.",
                        lineno,
                        "method",
                    )
                    continue
                if obj.get("url") != batch.endpoint:
                    err(
                        "url_mismatch",
                        "The URL provided for this request does not match the batch endpoint "
                        f"'{batch.endpoint}'.",
                        lineno,
                        "url",
                    )
                    continue
                body = obj.get("body")
                if not isinstance(body, dict):
                    err(
                        "missing_required_parameter",
                        "Missing required parameter: 'body'.",
                        lineno,
                        "body",
                    )
                    continue
                line_model = body.get("model")
                if not isinstance(line_model, str) or not line_model:
                    err(
                        "missing_required_parameter",
                        "Missing required parameter: 'body.model'.",
                        lineno,
                        "body.model",
                    )
                    continue
                if model is None:
                    model = line_model
                elif line_model != model:
                    err(
                        "model_mismatch",
                        f"The model '{line_model}' on this line differs from '{model}' used "
                        "earlier in the file; a batch file must use a single model.",
                        lineno,
                        "body.model",
                    )
                    continue
                try:
                    req = parse_embedding_body(body, cfg)
                except APIError as exc:
                    if exc.code == "model_not_found" or exc.code == "too_many_inputs":
                        err(str(exc.code), exc.message, lineno, "body." + (exc.param or "model"))
                        continue
                    # Other malformed bodies (empty input, bad dimensions...) fail only their
                    # own request, in the error file, with the status the endpoint would send.
                    plans.append(_Plan(start, len(raw), custom_id, 0, 0, exc))
                    continue
                req.count_tokens()
                try:
                    req.check_token_limits(cfg)
                except APIError as exc:
                    err(str(exc.code), exc.message, lineno, "body.input")
                    continue
                total_inputs += len(req.texts)
                plans.append(_Plan(start, len(raw), custom_id, req.total_tokens, len(req.texts)))
        if not plans and not errors:
            err("empty_file", "The batch input file is empty.", None)
        if len(plans) + len(errors) > cfg.max_batch_requests:
            err(
                "too_many_tasks",
                f"The batch input file contains {len(plans) + len(errors)} requests; the "
                f"maximum is {cfg.max_batch_requests}.",
                None,
            )
        if total_inputs > cfg.max_batch_inputs:
            err(
                "too_many_tasks",
                f"The batch contains {total_inputs} embedding inputs across all requests; the "
                f"maximum is {cfg.max_batch_inputs}.",
                None,
            )
        return plans, model, errors

    def _acquire_compute(self, batch: BatchRecord) -> bool:
        """Wait for a compute slot (``config.batch_workers``, read live). False if cancelled."""
        with self._compute:
            while self._computing >= self._get_config().batch_workers:
                if batch.abandoned:
                    raise _Abandoned
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
        self, batch: BatchRecord, path: Path, plans: list[_Plan], cfg: EmulatorConfig
    ) -> tuple[_Spool, _Spool] | None:
        """Run the requests, writing result lines to two spools. None if cancelled first."""
        if not self._acquire_compute(batch):
            return None
        out = _Spool(self._files.new_tmp_path(".out"))
        errf = _Spool(self._files.new_tmp_path(".err"))
        try:
            n_done = len(plans)
            if cfg.batch_outcome in ("expired", "cancelled"):
                n_done = math.floor(len(plans) * cfg.expire_completed_fraction)
            fail_re = re.compile(cfg.fail_custom_id_pattern) if cfg.fail_custom_id_pattern else None
            with path.open("rb") as fh:
                for i, plan in enumerate(plans):
                    if batch.abandoned:
                        raise _Abandoned
                    if batch.cancel_event.is_set():
                        break
                    cid = json.dumps(plan.custom_id)
                    line_id = json.dumps(new_id("batch_req_"))
                    if i >= n_done:
                        if cfg.batch_outcome == "cancelled":
                            break  # never run: in neither file
                        errf.write(
                            f'{{"id":{line_id},"custom_id":{cid},"response":null,"error":'
                            '{"code":"batch_expired","message":"This request could not be '
                            'executed before the completion window expired."}}'
                        )
                        self._count(batch, failed=1)
                        continue
                    req_id = json.dumps(new_id("req_"))
                    if fail_re is not None and fail_re.search(plan.custom_id):
                        body = error_body(
                            "The server had an error while processing your request. Sorry "
                            "about that! (emulated: custom_id matches fail_custom_id_pattern)",
                            "server_error",
                        )
                        errf.write(self._response_line(line_id, cid, 500, req_id, json.dumps(body)))
                        self._count(batch, failed=1)
                        continue
                    if plan.error is not None:
                        errf.write(
                            self._response_line(
                                line_id,
                                cid,
                                plan.error.status,
                                req_id,
                                plan.error.body_bytes().decode(),
                            )
                        )
                        self._count(batch, failed=1)
                        continue
                    fh.seek(plan.offset)
                    obj = json.loads(fh.read(plan.length))
                    req = parse_embedding_body(obj["body"], cfg)
                    req.token_counts = [plan.tokens]
                    text = render_embedding_response(req)
                    out.write(self._response_line(line_id, cid, 200, req_id, text))
                    self._count(batch, completed=1, tokens=plan.tokens)
                    self._stats.add(
                        batch_requests=1,
                        embedding_inputs=plan.inputs,
                        batch_billed_tokens=plan.tokens,
                    )
        except BaseException:
            out.discard()
            errf.discard()
            raise
        finally:
            self._release_compute()
        return out, errf

    @staticmethod
    def _response_line(line_id: str, cid: str, status: int, req_id: str, body: str) -> str:
        return (
            f'{{"id":{line_id},"custom_id":{cid},"response":{{"status_code":{status},'
            f'"request_id":{req_id},"body":{body}}},"error":null}}'
        )

    @staticmethod
    def _count(batch: BatchRecord, completed: int = 0, failed: int = 0, tokens: int = 0) -> None:
        with batch.lock:
            batch.completed += completed
            batch.failed += failed
            batch.input_tokens += tokens

    def _publish(
        self, batch: BatchRecord, out: _Spool, errf: _Spool
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

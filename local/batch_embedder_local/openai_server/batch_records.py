"""Batch records of the emulator: state, wire shape (``openai.types.Batch``), output spools.

The request runner :func:`run_requests` computes the embeddings of a validated batch and
writes its output / error lines (shape: the Batch API's request output, one JSON object per
line with ``id``, ``custom_id``, ``response`` {``status_code``, ``request_id``, ``body``}
and ``error``); lifecycle in :mod:`.batches`, validation in :mod:`.batch_validate`.
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

from openai.types import Batch

from .config import EmulatorConfig
from .embedding_api import parse_embedding_body, render_embedding_response
from .errors import APIError, error_body, new_id
from .stats import Stats

__all__ = [
    "TERMINAL",
    "Abandoned",
    "BatchRecord",
    "Plan",
    "Spool",
    "count",
    "line_error",
    "now",
    "resolve_deployment",
    "response_line",
    "run_requests",
]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class Plan:
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
    deployments: dict[str, str] | None = None  # Azure: deployment -> model of the lines
    cancel_event: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    cancel_started: float = 0.0
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_model(self) -> Batch:
        """The ``openai.types.Batch`` served for this batch (validated)."""
        with self.lock:
            errors = {"object": "list", "data": list(self.errors)} if self.errors else None
            return Batch.model_validate(
                {
                    "id": self.id,
                    "object": "batch",
                    "endpoint": self.endpoint,
                    "model": self.model,
                    "errors": errors if self.errors is not None else None,
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
            )

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_model` as a JSON-ready dict."""
        return self.to_model().model_dump(mode="json")


class Abandoned(Exception):
    """The emulator was reset or stopped while the batch ran."""


class Spool:
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


def now() -> int:
    return int(time.time())


def line_error(
    code: str, message: str, line: int | None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def response_line(line_id: str, cid: str, status: int, req_id: str, body: str) -> str:
    """One output / error file line (``line_id``, ``cid``, ``req_id`` already JSON strings;
    ``body`` the JSON text of the response body)."""
    return (
        f'{{"id":{line_id},"custom_id":{cid},"response":{{"status_code":{status},'
        f'"request_id":{req_id},"body":{body}}},"error":null}}'
    )


def count(batch: BatchRecord, completed: int = 0, failed: int = 0, tokens: int = 0) -> None:
    """Add to the batch's ``request_counts`` and ``usage.input_tokens``."""
    with batch.lock:
        batch.completed += completed
        batch.failed += failed
        batch.input_tokens += tokens


def run_requests(
    batch: BatchRecord,
    path: Path,
    plans: list[Plan],
    stats: Stats,
    new_tmp_path: Callable[[str], Path],
) -> tuple[Spool, Spool]:
    """Run the validated requests of ``batch`` (input file ``path``) into two spools.

    Completed requests are billed (``stats``: ``batch_requests``, ``embedding_inputs``,
    ``batch_billed_tokens``). With ``batch_outcome`` expired / cancelled only the first
    ``expire_completed_fraction`` run: the rest get ``batch_expired`` lines (expired) or
    appear nowhere (cancelled). Stops early when the batch is cancelled.

    Returns:
        ``(output spool, error spool)``.

    Raises:
        Abandoned: the emulator was reset or stopped meanwhile (spools discarded).
    """
    cfg = batch.config
    out = Spool(new_tmp_path(".out"))
    errf = Spool(new_tmp_path(".err"))
    try:
        n_done = len(plans)
        if cfg.batch_outcome in ("expired", "cancelled"):
            n_done = math.floor(len(plans) * cfg.expire_completed_fraction)
        fail_re = re.compile(cfg.fail_custom_id_pattern) if cfg.fail_custom_id_pattern else None
        with path.open("rb") as fh:
            for i, plan in enumerate(plans):
                if batch.abandoned:
                    raise Abandoned
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
                    count(batch, failed=1)
                    continue
                req_id = json.dumps(new_id("req_"))
                if fail_re is not None and fail_re.search(plan.custom_id):
                    body = error_body(
                        "The server had an error while processing your request. Sorry "
                        "about that! (emulated: custom_id matches fail_custom_id_pattern)",
                        "server_error",
                    )
                    errf.write(response_line(line_id, cid, 500, req_id, json.dumps(body)))
                    count(batch, failed=1)
                    continue
                if plan.error is not None:
                    text = plan.error.body_bytes().decode()
                    errf.write(response_line(line_id, cid, plan.error.status, req_id, text))
                    count(batch, failed=1)
                    continue
                fh.seek(plan.offset)
                obj = json.loads(fh.read(plan.length))
                req = parse_embedding_body(resolve_deployment(obj["body"], batch), cfg)
                req.token_counts = [plan.tokens]
                text = render_embedding_response(req)
                out.write(response_line(line_id, cid, 200, req_id, text))
                count(batch, completed=1, tokens=plan.tokens)
                stats.add(
                    batch_requests=1,
                    embedding_inputs=plan.inputs,
                    batch_billed_tokens=plan.tokens,
                )
    except BaseException:
        out.discard()
        errf.discard()
        raise
    return out, errf


def resolve_deployment(body: dict[str, Any], batch: BatchRecord) -> dict[str, Any]:
    """``body`` with its ``model`` mapped through the batch's Azure deployments (a name
    not in the map is its own model, as with a deployment named after its model)."""
    if batch.deployments is None or not isinstance(body.get("model"), str):
        return body
    model = body["model"]
    return {**body, "model": batch.deployments.get(model, model)}

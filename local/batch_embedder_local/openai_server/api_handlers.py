"""Synchronous halves of the emulator's API routes (run in Starlette's thread pool).

``/v1/embeddings`` (faults, token limits, rate limits, billing), the storing of an upload
and the list helpers; the routing itself is in :mod:`.app`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile

from .config import EmulatorConfig
from .embedding_api import parse_embedding_body, render_embedding_response
from .errors import APIError, invalid_value
from .faults import form_expires_after
from .ratelimit import format_duration, retry_after_headers
from .store import UPLOAD_PURPOSES, FileStore, StoredFile

if TYPE_CHECKING:
    from .server import OpenAIEmulator

__all__ = ["embeddings_response", "page", "query_int", "store_upload"]

MB = 1024 * 1024


def embeddings_response(emu: OpenAIEmulator, body: Any) -> tuple[str, str]:
    """Answer one ``POST /v1/embeddings`` body: ``(response JSON text, model name)``.

    Order: injected faults, body validation, token limits, rate limits, then the vectors;
    only a 200 bills (``sync_requests``, ``embedding_inputs``, ``sync_billed_tokens``).

    Raises:
        APIError: the 4xx / 5xx OpenAI would send (429 with ``retry-after`` headers).
    """
    cfg = emu.current_config()
    model = body.get("model") if isinstance(body, dict) else None
    emu.faults.check_embeddings(
        cfg, model if isinstance(model, str) else "text-embedding-3-small", emu.take_fault
    )
    req = parse_embedding_body(body, cfg)
    req.count_tokens()
    req.check_token_limits(cfg)
    total = req.total_tokens
    refused = emu.limiter.acquire(total, cfg.rpm_limit, cfg.tpm_limit)
    if refused is not None:
        emu.counters.add(rate_limited=1)
        unit = "requests per min (RPM)" if refused.kind == "requests" else "tokens per min (TPM)"
        if refused.retry_after is None:
            raise APIError(
                429,
                f"Request too large for {req.model.name} in organization "
                f"org-local-emulator on {unit}: Limit {refused.limit}, Requested "
                f"{refused.requested}. The input or output tokens must be reduced in "
                "order to run successfully. Visit https://platform.openai.com/account/"
                "rate-limits to learn more.",
                type_=refused.kind,
                code="rate_limit_exceeded",
            )
        raise APIError(
            429,
            f"Rate limit reached for {req.model.name} in organization org-local-emulator "
            f"on {unit}: Limit {refused.limit}, Used {refused.used}, Requested "
            f"{refused.requested}. Please try again in "
            f"{format_duration(refused.retry_after)}. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            type_=refused.kind,
            code="rate_limit_exceeded",
            headers=retry_after_headers(refused.retry_after),
        )
    text = render_embedding_response(req)
    emu.counters.add(sync_requests=1, embedding_inputs=len(req.texts), sync_billed_tokens=total)
    return text, req.model.name


def store_upload(
    files: FileStore,
    cfg: EmulatorConfig,
    fields: Mapping[str, str],
    upload: UploadFile | None,
) -> StoredFile:
    """Check a ``POST /v1/files`` form and copy the upload into the store.

    Args:
        fields: the form's text fields (``purpose``, ``expires_after[anchor|seconds]``).
        upload: the ``file`` field, as python-multipart spooled it.

    Raises:
        APIError: 400 ``missing_required_parameter``, ``invalid_value``,
            ``file_too_large`` (sizes in bytes: ``max_batch_file_bytes`` for purpose batch,
            else ``max_file_bytes``) or ``invalid_file_format`` (batch files need .jsonl).
    """
    if "purpose" not in fields:
        raise APIError(
            400,
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if upload is None:
        raise APIError(
            400,
            "Missing required parameter: 'file'.",
            param="file",
            code="missing_required_parameter",
        )
    purpose = fields["purpose"].strip()
    if purpose not in UPLOAD_PURPOSES:
        raise invalid_value("purpose", purpose, UPLOAD_PURPOSES)
    filename = upload.filename or "upload"
    limit = cfg.max_batch_file_bytes if purpose == "batch" else cfg.max_file_bytes
    size = upload.size if upload.size is not None else 0
    if size > limit:
        raise APIError(
            400,
            f"File is too large ({size} bytes). The maximum size for purpose "
            f"'{purpose}' is {limit} bytes.",
            param="file",
            code="file_too_large",
        )
    if purpose == "batch" and not filename.lower().endswith(".jsonl"):
        raise APIError(
            400,
            "Invalid file format for Batch API. Must be .jsonl",
            param="file",
            code="invalid_file_format",
        )
    expiry = form_expires_after(fields, cfg)
    tmp = files.new_tmp_path(".upload")
    try:
        upload.file.seek(0)
        with tmp.open("wb") as out:
            shutil.copyfileobj(upload.file, out, MB)
        return files.adopt(tmp, filename, purpose, expiry)
    finally:
        tmp.unlink(missing_ok=True)


def query_int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within ``lo..hi`` (``default`` when absent).

    Raises:
        APIError: 400 (not an integer) or 400 ``integer_out_of_range``.
    """
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(
            400, f"Invalid value for '{name}': expected an integer.", param=name
        ) from None
    if not lo <= value <= hi:
        raise APIError(
            400,
            f"Invalid '{name}': integer out of range. Expected a value between {lo} and {hi}, "
            f"but got {value} instead.",
            param=name,
            code="integer_out_of_range",
        )
    return value


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """A cursor page ``{"object": "list", "data", "first_id", "last_id", "has_more"}``
    of ``items`` (newest first) after the id ``after``."""
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    chunk = items[:limit]
    return {
        "object": "list",
        "data": chunk,
        "first_id": chunk[0]["id"] if chunk else None,
        "last_id": chunk[-1]["id"] if chunk else None,
        "has_more": len(items) > limit,
    }

"""Validation of the Batch API's create parameters and input files (emulator, dev only).

Contract (``docs/openai-limits.md``, "Batch API"): input is one JSON object per line with
``custom_id`` (unique), ``method`` ``POST``, ``url`` equal to the batch endpoint, ``body``
an embeddings request; one model per file; at most 50,000 requests and 50,000 embedding
inputs; each request within the ``/v1/embeddings`` limits (else the whole batch fails
validation, as configured here).

Error codes ``invalid_json_line``, ``duplicate_custom_id``, ``url_mismatch``,
``model_mismatch``, ``empty_file``, ``too_many_tasks`` are the ones OpenAI documents;
``missing_required_parameter``, ``invalid_method``, ``model_not_found``,
``too_many_inputs``, ``context_length_exceeded`` and ``max_tokens_per_request`` are the
emulator's (or reported) names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .batch_records import Abandoned, BatchRecord, Plan, line_error, resolve_deployment
from .config import EmulatorConfig
from .embedding_api import parse_embedding_body
from .errors import APIError, invalid_value
from .faults import parse_expires_after
from .store import FileStore

__all__ = ["CreateParams", "check_create_params", "validate_input"]

SUPPORTED_ENDPOINTS = ("/v1/embeddings",)
#: Azure OpenAI names the endpoint without ``/v1`` (its batch lines say ``/embeddings``).
AZURE_ENDPOINTS = ("/embeddings", "/v1/embeddings")
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


@dataclass(frozen=True)
class CreateParams:
    """Checked parameters of ``POST /v1/batches``."""

    endpoint: str
    completion_window: str
    input_file_id: str
    metadata: dict[str, str] | None
    output_expires_after: int | None


def check_create_params(
    params: Any, files: FileStore, cfg: EmulatorConfig, *, azure: bool = False
) -> CreateParams:
    """Validate ``POST /v1/batches`` parameters (``azure``: also accept ``/embeddings``).

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
    if not (azure and endpoint in AZURE_ENDPOINTS):
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
    check_metadata(metadata)
    file_id = params["input_file_id"]
    stored = files.get(file_id) if isinstance(file_id, str) else None
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
    expiry = parse_expires_after(params.get("output_expires_after"), "output_expires_after", cfg)
    return CreateParams(
        endpoint, window, file_id, dict(metadata) if metadata is not None else None, expiry
    )


def check_metadata(metadata: Any) -> None:
    """Check batch ``metadata``: at most 16 string values, keys <= 64, values <= 512 chars.

    Raises:
        APIError: 400 with OpenAI's wording.
    """
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise APIError(400, "Invalid type for 'metadata': expected an object.", param="metadata")
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


def validate_input(
    batch: BatchRecord, path: Path, cfg: EmulatorConfig
) -> tuple[list[Plan], str | None, list[dict[str, Any]]]:
    """Read the input file once; return the line plans, the model and any errors.

    Line models go through the batch's Azure deployments first (:func:`resolve_deployment`).

    Raises:
        Abandoned: the emulator was reset or stopped meanwhile.
    """
    plans: list[Plan] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    total_inputs = 0
    offset = 0
    lineno = 0

    def err(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(line_error(code, message, line, param))

    with path.open("rb") as fh:
        for raw in fh:
            lineno += 1
            start, offset = offset, offset + len(raw)
            if batch.abandoned:
                raise Abandoned
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
                req = parse_embedding_body(resolve_deployment(body, batch), cfg)
            except APIError as exc:
                if exc.code == "model_not_found" or exc.code == "too_many_inputs":
                    err(str(exc.code), exc.message, lineno, "body." + (exc.param or "model"))
                    continue
                # Other malformed bodies (empty input, bad dimensions...) fail only their
                # own request, in the error file, with the status the endpoint would send.
                plans.append(Plan(start, len(raw), custom_id, 0, 0, exc))
                continue
            req.count_tokens()
            try:
                req.check_token_limits(cfg)
            except APIError as exc:
                err(str(exc.code), exc.message, lineno, "body.input")
                continue
            total_inputs += len(req.texts)
            plans.append(Plan(start, len(raw), custom_id, req.total_tokens, len(req.texts)))
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

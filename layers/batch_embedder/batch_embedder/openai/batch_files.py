"""Batch input files: chunks packed into ``/v1/embeddings`` request lines, split into files.

Limits (OpenAI Batch guide and embeddings reference, summarised in
``docs/openai-limits.md``):

- per request: at most 2,048 inputs and 300,000 tokens summed over its inputs;
- per batch (= per input file): at most 50,000 requests, 50,000 embedding inputs, 200 MB.

Each request line carries several chunks; its ``custom_id`` is ``"<job_id>:<first>-<end>"``:
the half-open range of the job's chunk sequence numbers (``seq``) it holds, so
``data[i].index`` maps to chunk ``first + i`` whatever order the output comes back in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_REQUESTS_PER_BATCH = 50_000
MAX_INPUTS_PER_BATCH = 50_000
#: 200 MB input-file cap, counted in decimal megabytes to stay on the safe side.
MAX_BATCH_FILE_BYTES = 200_000_000
ENDPOINT: Final[Literal["/v1/embeddings"]] = "/v1/embeddings"
#: Models that count tokens with cl100k_base, as the pipeline does (OpenAI's embedding
#: models: https://platform.openai.com/docs/guides/embeddings).
CL100K_MODELS = frozenset(
    {"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"}
)


def tokens_per_request(model: str) -> int:
    """Most tokens (cl100k_base) one request carries for ``model``: OpenAI's 300,000, or half
    of it for a model whose own tokenizer may count more (``local-minilm``'s WordPiece
    counts up to about 1.4x cl100k_base on prose; a compatible server's model), so that the
    provider's own count stays under the limit."""
    return MAX_TOKENS_PER_REQUEST if model in CL100K_MODELS else MAX_TOKENS_PER_REQUEST // 2


@dataclass(frozen=True)
class BatchLimits:
    """The limits a file is packed to (defaults: OpenAI's; tests use smaller ones)."""

    inputs_per_request: int = MAX_INPUTS_PER_REQUEST
    tokens_per_request: int = MAX_TOKENS_PER_REQUEST
    requests_per_file: int = MAX_REQUESTS_PER_BATCH
    inputs_per_file: int = MAX_INPUTS_PER_BATCH
    bytes_per_file: int = MAX_BATCH_FILE_BYTES
    #: Tokens per file: at most the model's enqueued-token cap, so every batch can be
    #: enqueued once the queue has room (a larger one never could).
    tokens_per_file: int = 1 << 62


@dataclass
class PlannedFile:
    """A JSONL file written to disk, ready for upload with ``purpose="batch"``."""

    path: Path
    requests: int = 0
    inputs: int = 0
    tokens: int = 0
    bytes: int = 0
    custom_ids: list[str] = field(default_factory=list)


def custom_id(job_id: str, first: int, end: int) -> str:
    """The custom_id of the request holding chunks ``first`` .. ``end - 1``."""
    return f"{job_id}:{first}-{end}"


def parse_custom_id(value: str) -> tuple[str, int, int]:
    """``(job_id, first, end)`` from a custom_id made by :func:`custom_id`.

    Raises:
        ValueError: the value is not of that form.
    """
    job_id, sep, span = value.rpartition(":")
    first, dash, end = span.partition("-")
    if not sep or not dash or not first.isdigit() or not end.isdigit() or int(end) <= int(first):
        raise ValueError(f"custom_id {value!r} is not '<job_id>:<first>-<end>'")
    return job_id, int(first), int(end)


def _line(
    job_id: str, first: int, texts: list[str], model: str, dimensions: int | None, url: str
) -> bytes:
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "base64"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    record = {
        "custom_id": custom_id(job_id, first, first + len(texts)),
        "method": "POST",
        "url": url,
        "body": body,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def pack_requests(
    chunks: Iterable[tuple[int, str, int]], limits: BatchLimits | None = None
) -> Iterator[list[tuple[int, str, int]]]:
    """Group ``(seq, text, token_count)`` rows into requests within the per-request limits.

    A request holds consecutive seqs only (its custom_id is a range): a gap in the seqs
    (rows left out: urgent, or of a prefix over budget) starts a new request.

    Yields:
        Consecutive rows for one ``/v1/embeddings`` request (at most
        ``limits.inputs_per_request`` inputs and ``limits.tokens_per_request`` tokens).

    Raises:
        ValueError: one chunk alone exceeds the per-request token limit.
    """
    limits = limits or BatchLimits()
    request: list[tuple[int, str, int]] = []
    tokens = 0
    for row in chunks:
        if row[2] > limits.tokens_per_request:
            raise ValueError(f"chunk {row[0]} has {row[2]} tokens, over the request cap")
        if request and (
            row[0] != request[-1][0] + 1
            or len(request) + 1 > min(limits.inputs_per_request, limits.inputs_per_file)
            or tokens + row[2] > limits.tokens_per_request
        ):
            yield request
            request, tokens = [], 0
        request.append(row)
        tokens += row[2]
    if request:
        yield request


def write_batch_files(
    chunks: Iterable[tuple[int, str, int]],
    *,
    job_id: str,
    model: str,
    dimensions: int | None,
    directory: Path,
    limits: BatchLimits | None = None,
    url: str = ENDPOINT,
) -> list[PlannedFile]:
    """Pack ``(seq, text, token_count)`` rows (increasing seqs) into batch files.

    ``model`` is what the lines' ``body.model`` names (an Azure deployment: see
    ``client.request_model``); ``url`` the lines' endpoint, which must equal the batch's
    (``/v1/embeddings``; Azure's ``/embeddings``: ``client.batch_endpoint``).

    A request closes before it would pass the per-request input or token limit; a file
    closes before it would pass the per-batch request, input, byte or token limit. Files are
    streamed to ``directory`` (never held whole in memory).

    Returns:
        The files written, in order (at least one if any chunk was given).

    Raises:
        ValueError: chunk seqs are not increasing, or one chunk alone exceeds
            the per-request token limit.
    """
    limits = limits or BatchLimits()
    files: list[PlannedFile] = []
    handle: IO[bytes] | None = None
    current: PlannedFile | None = None
    last = -1

    def ordered() -> Iterator[tuple[int, str, int]]:
        nonlocal last
        for row in chunks:
            if row[0] <= last:
                raise ValueError(f"chunk {row[0]} out of order (after {last})")
            last = row[0]
            yield row

    try:
        for request in pack_requests(ordered(), limits):
            first = request[0][0]
            texts = [text for _, text, _ in request]
            tokens = sum(t for _, _, t in request)
            line = _line(job_id, first, texts, model, dimensions, url)
            if current is None or (
                current.requests + 1 > limits.requests_per_file
                or current.inputs + len(texts) > limits.inputs_per_file
                or current.bytes + len(line) > limits.bytes_per_file
                or current.tokens + tokens > limits.tokens_per_file
            ):
                if handle is not None:
                    handle.close()
                current = PlannedFile(path=directory / f"{job_id}-{len(files):04d}.jsonl")
                files.append(current)
                handle = current.path.open("wb")
            assert handle is not None
            handle.write(line)
            current.requests += 1
            current.inputs += len(texts)
            current.tokens += tokens
            current.bytes += len(line)
            current.custom_ids.append(custom_id(job_id, first, first + len(texts)))
    finally:
        if handle is not None:
            handle.close()
    return files

"""ChunkAndEstimate: read the upload, extract text, chunk by tokens, estimate cost.

An upload is one of:

- a document (``.txt``, ``.md``, ``.html``, ...): one document;
- a bundle (``*.bundle.jsonl``): one document per line, ``{"id": ..., "text": ...}`` (the
  text from ``JSON_TEXT_FIELDS``), stored under the key ``<bundle key>#<id>``;
- a prefix manifest (``*.manifest.json``): ``{"prefix": "bulk/2026-11/"}``, one document
  per object under that prefix of the same bucket (put them under a prefix the EventBridge
  rule ignores, ``BulkPrefix``, so they do not start executions of their own).

Bundles and manifests turn thousands of small files into one job, hence a handful of
batches (see ``docs/bulk-loads.md``). A bad document inside them is left out and
reported; a bad single document fails the execution.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from .. import pricing
from ..aws import s3
from ..chunking import chunk_text
from ..documents import decode_document, decode_text, normalize_text
from ..errors import InvalidDocumentError
from ..metrics import emit
from ..models import ChunkedJob, ChunkRequest, CostEstimate, DocumentRef, S3Location
from ..settings import Settings
from ..tokenizer import get_encoding

logger = Logger(child=True)

BUNDLE_SUFFIX = ".bundle.jsonl"
MANIFEST_SUFFIX = ".manifest.json"
#: Objects a prefix manifest reads at once.
READ_CONCURRENCY = 16
#: Rejection reasons kept in the job (all are counted).
MAX_REJECTED_SHOWN = 20

#: (document key, version, text)
Doc = tuple[str, str | None, str]


def manifest_key(job_id: str) -> str:
    """Work-bucket key of a job's chunk manifest."""
    return f"jobs/{job_id}/chunks.jsonl"


class _Rejections:
    def __init__(self) -> None:
        self.count = 0
        self.shown: list[str] = []

    def add(self, key: str, reason: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_REJECTED_SHOWN:
            self.shown.append(f"{key}: {reason}")


def _bundle_docs(
    key: str, data: bytes, version: str | None, settings: Settings, rejected: _Rejections
) -> Iterator[Doc]:
    fields = settings.json_fields()
    seen: set[str] = set()
    for number, line in enumerate(decode_text(key, data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            rejected.add(f"{key} line {number}", f"invalid JSON ({exc.msg})")
            continue
        doc_id = record.get("id", record.get("key")) if isinstance(record, dict) else None
        if doc_id is None or str(doc_id) in seen:
            reason = "no 'id' field" if doc_id is None else f"duplicate id {doc_id!r}"
            rejected.add(f"{key} line {number}", reason)
            continue
        seen.add(str(doc_id))
        parts = [record[f] for f in fields if isinstance(record.get(f), str)]
        body = normalize_text("\n\n".join(parts))
        if not body:
            rejected.add(f"{key}#{doc_id}", f"no text in the fields {', '.join(fields)}")
            continue
        yield f"{key}#{doc_id}", version, body


def _prefix_docs(
    bucket: str, manifest: str, data: bytes, settings: Settings, rejected: _Rejections
) -> Iterator[Doc]:
    try:
        spec = json.loads(data)
        prefix = spec["prefix"]
    except (ValueError, KeyError, TypeError):
        raise InvalidDocumentError(
            manifest, 'a manifest must be a JSON object like {"prefix": "bulk/2026-11/"}'
        ) from None
    if not isinstance(prefix, str) or not prefix:
        raise InvalidDocumentError(manifest, "the manifest's prefix must be a non-empty string")
    keys = [k for k, _ in s3.list_keys(bucket, prefix) if not k.endswith("/") and k != manifest]

    def read(key: str) -> Doc | tuple[str, str]:
        try:
            body, etag = s3.read_document(bucket, key, None, max_bytes=settings.max_document_bytes)
            text = decode_document(
                key, body, json_fields=settings.json_fields(), csv_columns=settings.csv_columns()
            )
        except InvalidDocumentError as exc:
            return key, exc.reason
        return key, etag, text

    with ThreadPoolExecutor(max_workers=READ_CONCURRENCY) as pool:
        for result in pool.map(read, keys):
            if len(result) == 2:
                rejected.add(result[0], result[1])
            else:
                yield result


def _documents(
    request: ChunkRequest,
    data: bytes,
    version: str | None,
    settings: Settings,
    rejected: _Rejections,
) -> Iterator[Doc]:
    key = request.event.detail.object.key
    if key.endswith(BUNDLE_SUFFIX):
        yield from _bundle_docs(key, data, version, settings, rejected)
    elif key.endswith(MANIFEST_SUFFIX):
        yield from _prefix_docs(request.event.detail.bucket.name, key, data, settings, rejected)
    else:
        text = decode_document(
            key,
            data,
            json_fields=settings.json_fields(),
            csv_columns=settings.csv_columns(),
            max_bytes=settings.max_document_bytes,
        )
        yield key, version, text


def chunk_and_estimate(request: ChunkRequest, settings: Settings) -> ChunkedJob:
    """Chunk the upload's documents and write the job's manifest (JSONL) to the work bucket.

    Manifest record: ``{"seq", "source_key", "source_version", "chunk_index", "text",
    "token_count", "sha256", "char_start", "char_end"}``: ``seq`` numbers the job's chunks,
    ``chunk_index`` the document's; offsets are characters of the normalised text.

    Returns:
        The job with exact token counts and its estimated cost (USD, batch and standard).

    Raises:
        InvalidDocumentError: the upload is empty, binary, not UTF-8, unsupported, over the
            size limit, has no text, or (bundle/manifest) holds no valid document.
    """
    obj = request.event.detail.object
    bucket = request.event.detail.bucket.name
    data, etag = s3.read_document(
        bucket, obj.key, obj.version_id, max_bytes=settings.max_document_bytes
    )
    version = obj.version_id or etag or obj.etag
    rejected = _Rejections()
    encoding = get_encoding()
    manifest = S3Location(bucket=settings.work_bucket, key=manifest_key(request.job_id))
    counts = {"chunks": 0, "tokens": 0, "documents": 0}

    def records() -> Iterator[dict[str, Any]]:
        for doc_key, doc_version, text in _documents(request, data, version, settings, rejected):
            chunks = chunk_text(
                text,
                max_tokens=settings.chunk_tokens,
                overlap_tokens=settings.chunk_overlap_tokens,
                encoding=encoding,
            )
            if not chunks:
                rejected.add(doc_key, "contains no text to embed")
                continue
            counts["documents"] += 1
            for c in chunks:
                yield {
                    "seq": counts["chunks"],
                    "source_key": doc_key,
                    "source_version": doc_version,
                    "chunk_index": c.index,
                    "text": c.text,
                    "token_count": c.token_count,
                    "sha256": c.sha256,
                    "char_start": c.char_start,
                    "char_end": c.char_end,
                }
                counts["chunks"] += 1
                counts["tokens"] += c.token_count

    s3.write_jsonl(manifest.bucket, manifest.key, records())
    if counts["chunks"] == 0:
        detail = "; ".join(rejected.shown[:3])
        raise InvalidDocumentError(
            obj.key, f"holds no document with text to embed ({rejected.count} rejected: {detail})"
        )
    urgent = any(obj.key.startswith(p) for p in settings.sync_prefixes) or s3.has_tag(
        bucket, obj.key, obj.version_id, "priority", "urgent"
    )
    cost = pricing.breakdown(settings.embedding_model, counts["tokens"])
    emit("chunks", counts["chunks"], MetricUnit.Count)
    emit("estimated_tokens", counts["tokens"], MetricUnit.Count)
    if rejected.count:
        emit("rejected_documents", rejected.count, MetricUnit.Count)
        logger.warning(
            "documents left out", extra={"count": rejected.count, "first": rejected.shown}
        )
    logger.info("chunked", extra={"key": obj.key, **counts})
    return ChunkedJob(
        job_id=request.job_id,
        document=DocumentRef(
            bucket=bucket,
            key=obj.key,
            version_id=obj.version_id,
            etag=etag or obj.etag,
            size=len(data),
        ),
        model=settings.embedding_model,
        dimensions=settings.dimensions,
        manifest=manifest,
        chunks=counts["chunks"],
        tokens=counts["tokens"],
        estimate=CostEstimate(
            batch_usd=float(cost.batch_usd), standard_usd=float(cost.standard_usd)
        ),
        documents=counts["documents"],
        rejected_count=rejected.count,
        rejected=rejected.shown,
        urgent=urgent,
    )

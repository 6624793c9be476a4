"""ChunkAndEstimate: read a group's uploads, extract text, chunk by tokens, estimate cost.

A group is the list of S3 events the pipe collected in one window. For each key only the
newest event counts (highest ``sequencer``): a delete, or an upload that is one of

- a document (``.txt``, ``.md``, ``.html``, ...): one document;
- a bundle (``*.bundle.jsonl``): one document per line, ``{"id": ..., "text": ...}`` (the
  text from ``JSON_TEXT_FIELDS``), stored under the key ``<bundle key>#<id>``;
- a prefix manifest (``*.manifest.json``): ``{"prefix": "bulk/2026-11/"}``, one document
  per object under that prefix of the same bucket.

An upload whose ETag or bytes are those of the event already embedded for its key, under
the same settings, is *unchanged*: it is neither decoded nor chunked and costs no token
(``steps/unchanged.py``; one database lookup per group). ``unchanged`` in the output lists
them.

A bad document is left out and reported by name and reason (``documents.jsonl`` and the
execution's output); it never fails the rest of the group. A group with nothing to embed,
nothing to delete and nothing unchanged fails with InvalidDocument, naming every file and
its reason.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import metering, s3
from ..chunking import chunk_texts
from ..documents import Decoded, extract_document, normalize_text, read_text
from ..errors import InvalidDocumentError
from ..metrics import emit
from ..models import (
    ChunkedJob,
    CostEstimate,
    GroupRequest,
    ObjectCreated,
    ObjectDeleted,
    S3Location,
    Upload,
    UploadEvent,
)
from ..openai import pricing
from ..records import ChunkRow, DocumentOutcome, sequencer_key
from ..settings import Settings
from ..tokenizer import get_encoding
from .unchanged import Unchanged

logger = Logger(child=True)

BUNDLE_SUFFIX = ".bundle.jsonl"
MANIFEST_SUFFIX = ".manifest.json"
#: Objects read at once (uploads of a group, objects of a prefix manifest).
READ_CONCURRENCY = 16
#: Rejection reasons kept in the state payload (all are in documents.jsonl).
MAX_REJECTED_SHOWN = 20
URGENT_TAG = ("priority", "urgent")


@dataclass(frozen=True)
class Doc:
    """One document's text, ready to chunk."""

    key: str
    version: str | None
    text: str
    urgent: bool
    object_key: str = ""
    sequencer: str = ""
    encoding: str | None = None  # how the text was read (documents.Decoded.encoding)


@dataclass
class _Outcomes:
    rows: list[DocumentOutcome] = field(default_factory=list)

    def reject(self, key: str, reason: str) -> None:
        self.rows.append(DocumentOutcome(key=key, status="rejected", reason=reason))

    @property
    def rejected(self) -> list[DocumentOutcome]:
        return [r for r in self.rows if r.status == "rejected"]


def job_key(job_id: str, name: str) -> str:
    """Work-bucket key of one of a group's files (``chunks.jsonl``, ``embed.jsonl``, ...)."""
    return f"jobs/{job_id}/{name}"


def latest_events(uploads: Sequence[UploadEvent]) -> list[UploadEvent]:
    """The newest event of each key, by S3 ``sequencer`` (later in the list on a tie).

    Sequencers of one key compare as hexadecimal strings of equal length after padding
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
    """
    newest: dict[str, tuple[str, int, UploadEvent]] = {}
    for position, upload in enumerate(uploads):
        order = (upload.sequencer.rjust(32, "0"), position)
        current = newest.get(upload.key)
        if current is None or order > current[:2]:
            newest[upload.key] = (*order, upload)
    return [entry[2] for entry in sorted(newest.values(), key=lambda e: e[2].key)]


def _bundle_docs(key: str, data: bytes, version: str | None, urgent: bool, sequencer: str,
                 settings: Settings, out: _Outcomes) -> Iterator[Doc]:  # fmt: skip
    fields = settings.json_fields()
    seen: set[str] = set()
    decoded = read_text(key, data)
    for number, line in enumerate(decoded.text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            out.reject(f"{key} line {number}", f"invalid JSON ({exc.msg})")
            continue
        doc_id = record.get("id", record.get("key")) if isinstance(record, dict) else None
        if doc_id is None or str(doc_id) in seen:
            reason = "no 'id' field" if doc_id is None else f"duplicate id {doc_id!r}"
            out.reject(f"{key} line {number}", reason)
            continue
        seen.add(str(doc_id))
        parts = [record[f] for f in fields if isinstance(record.get(f), str)]
        body = normalize_text("\n\n".join(parts))
        if not body:
            out.reject(f"{key}#{doc_id}", f"no text in the fields {', '.join(fields)}")
            continue
        yield Doc(f"{key}#{doc_id}", version, body, urgent, key, sequencer, decoded.encoding)


def _decode(key: str, data: bytes, settings: Settings) -> Decoded:
    return extract_document(
        key,
        data,
        json_fields=settings.json_fields(),
        csv_columns=settings.csv_columns(),
        max_bytes=settings.max_document_bytes,
    )


def _prefix_docs(bucket: str, manifest: str, data: bytes, urgent: bool,
                 settings: Settings, out: _Outcomes) -> Iterator[Doc]:  # fmt: skip
    try:
        spec = json.loads(data)
        prefix = spec["prefix"]
    except (ValueError, KeyError, TypeError):
        out.reject(manifest, 'a manifest must be a JSON object like {"prefix": "bulk/2026-11/"}')
        return
    if not isinstance(prefix, str) or not prefix:
        out.reject(manifest, "the manifest's prefix must be a non-empty string")
        return
    keys = [k for k, _ in s3.list_keys(bucket, prefix) if not k.endswith("/") and k != manifest]

    def read(key: str) -> Doc | tuple[str, str]:
        try:
            body, etag = s3.read_document(bucket, key, None, max_bytes=settings.max_document_bytes)
            decoded = _decode(key, body, settings)
            return Doc(key, etag, decoded.text, urgent, encoding=decoded.encoding)
        except InvalidDocumentError as exc:
            return key, exc.reason

    with ThreadPoolExecutor(max_workers=READ_CONCURRENCY) as pool:
        for result in pool.map(metering.propagate(read), keys):
            if isinstance(result, Doc):
                yield result
            else:
                out.reject(*result)


def _is_urgent(upload: Upload, settings: Settings) -> bool:
    if any(upload.key.startswith(p) for p in settings.urgent_prefixes()):
        return True
    return s3.has_tag(upload.bucket, upload.key, upload.version_id, *URGENT_TAG)


def _read(upload: Upload, settings: Settings) -> tuple[Upload, bytes, str | None, bool] | str:
    try:
        data, etag = s3.read_upload(
            upload.bucket,
            upload.key,
            upload.version_id,
            size=upload.size,
            max_bytes=settings.max_document_bytes,
        )
    except InvalidDocumentError as exc:
        return exc.reason
    return upload, data, etag, _is_urgent(upload, settings)


def _documents(
    creates: list[Upload], settings: Settings, out: _Outcomes, skip: Unchanged
) -> Iterator[Doc]:
    with ThreadPoolExecutor(max_workers=READ_CONCURRENCY) as pool:
        for upload, read in zip(
            creates, pool.map(metering.propagate(lambda u: _read(u, settings)), creates),
            strict=True,
        ):  # fmt: skip
            if isinstance(read, str):
                out.reject(upload.key, read)
                continue
            _, data, etag, urgent = read
            if not upload.key.endswith(MANIFEST_SUFFIX) and skip.same_bytes(upload, data, etag):
                continue  # unchanged: neither decoded nor chunked
            version = upload.version_id or etag or upload.etag
            sequencer = sequencer_key(upload.sequencer)
            if upload.key.endswith(BUNDLE_SUFFIX):
                try:
                    yield from _bundle_docs(
                        upload.key, data, version, urgent, sequencer, settings, out
                    )
                except InvalidDocumentError as exc:
                    out.reject(upload.key, exc.reason)
            elif upload.key.endswith(MANIFEST_SUFFIX):
                yield from _prefix_docs(upload.bucket, upload.key, data, urgent, settings, out)
            else:
                try:
                    decoded = _decode(upload.key, data, settings)
                    yield Doc(upload.key, version, decoded.text, urgent, upload.key, sequencer,
                              decoded.encoding)  # fmt: skip
                except InvalidDocumentError as exc:
                    out.reject(upload.key, exc.reason)


def _skippable(upload: Upload) -> bool:
    # A prefix manifest stands for the objects under its prefix: never skipped.
    return not upload.key.endswith(MANIFEST_SUFFIX)


def budget_prefix(settings: Settings, key: str) -> str:
    """The longest ``PREFIX_TOKEN_LIMITS`` prefix ``key`` starts with, or ''."""
    matches = [p for p in settings.prefix_token_limits if key.startswith(p)]
    return max(matches, key=len) if matches else ""


def describe(keys: list[str]) -> str:
    """A group as a person reads it: the key, or 'N uploads: first, second, ...'."""
    if len(keys) == 1:
        return keys[0]
    shown = ", ".join(keys[:3])
    return f"{len(keys)} uploads: {shown}{', ...' if len(keys) > 3 else ''}"


def chunk_and_estimate(request: GroupRequest, settings: Settings) -> ChunkedJob:
    """Chunk the group's documents; write the chunk manifest and the per-document outcomes.

    Writes ``jobs/<job>/chunks.jsonl`` (:class:`ChunkRow`) and ``jobs/<job>/documents.jsonl``
    (:class:`DocumentOutcome`) to the work bucket: two S3 PUTs per group.

    Returns:
        The group with exact token counts, its estimated cost (USD, batch and standard),
        the keys it deletes and the documents it left out.

    Raises:
        InvalidDocumentError: nothing in the group can be embedded or deleted (the message
            names each file and its reason).
        ValueError: the group mixes buckets (one pipe serves one bucket).
    """
    buckets = {u.bucket for u in request.uploads}
    if len(buckets) != 1:
        raise ValueError(f"a group holds uploads of one bucket, not {sorted(buckets)}")
    bucket = buckets.pop()
    latest = latest_events(request.uploads)
    deleted = [u for u in latest if isinstance(u, ObjectDeleted)]
    creates: list[Upload] = [u for u in latest if isinstance(u, ObjectCreated)]
    deletes = [u.key for u in deleted]
    out = _Outcomes(
        [
            DocumentOutcome(key=u.key, status="deleted", object_key=u.key,
                            sequencer=sequencer_key(u.sequencer))
            for u in deleted
        ]
    )  # fmt: skip
    encoding = get_encoding()
    counts = {"chunks": 0, "tokens": 0, "documents": 0, "urgent": 0}
    skip = Unchanged.open(settings, bucket, [u for u in creates if _skippable(u)])
    creates = skip.split(creates)

    def rows() -> Iterator[dict[str, object]]:
        docs, texts = itertools.tee(_documents(creates, settings, out, skip))
        # The next documents are encoded on two threads while this one is planned.
        chunked = chunk_texts(
            (d.text for d in texts),
            max_tokens=settings.chunk_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
            encoding=encoding,
        )
        for doc, chunks in zip(docs, chunked, strict=True):
            if not chunks:
                out.reject(doc.key, "contains no text to embed")
                continue
            prefix = budget_prefix(settings, doc.key)
            tokens = sum(c.token_count for c in chunks)
            out.rows.append(
                DocumentOutcome(key=doc.key, version=doc.version, status="accepted",
                                chunks=len(chunks), tokens=tokens, prefix=prefix,
                                urgent=doc.urgent, object_key=doc.object_key or doc.key,
                                sequencer=doc.sequencer, encoding=doc.encoding)
            )  # fmt: skip
            counts["documents"] += 1
            counts["urgent"] += int(doc.urgent)
            for c in chunks:
                yield ChunkRow(
                    seq=counts["chunks"], source_key=doc.key, source_version=doc.version,
                    chunk_index=c.index, text=c.text, token_count=c.token_count,
                    sha256=c.sha256, char_start=c.char_start, char_end=c.char_end,
                    prefix=prefix, urgent=doc.urgent, object_key=doc.object_key or doc.key,
                    sequencer=doc.sequencer,
                ).model_dump()  # fmt: skip
                counts["chunks"] += 1
                counts["tokens"] += c.token_count

    manifest = S3Location(bucket=settings.work_bucket, key=job_key(request.job_id, "chunks.jsonl"))
    try:
        s3.write_jsonl(manifest.bucket, manifest.key, rows())
    finally:
        skip.record({r.object_key or r.key for r in out.rows if r.status == "accepted"})
    out.rows.extend(DocumentOutcome(key=k, status="unchanged", object_key=k) for k in skip.keys)
    outcomes = S3Location(
        bucket=settings.work_bucket, key=job_key(request.job_id, "documents.jsonl")
    )
    s3.write_jsonl(outcomes.bucket, outcomes.key, (r.model_dump() for r in out.rows))
    rejected = out.rejected
    shown = [f"{r.key}: {r.reason}" for r in rejected[:MAX_REJECTED_SHOWN]]
    if counts["chunks"] == 0 and not deletes and not skip.keys:
        raise InvalidDocumentError(
            describe([u.key for u in latest]),
            f"nothing to embed ({len(rejected)} rejected: {'; '.join(shown[:5])})",
        )
    model = settings.embedding_model
    cost = pricing.breakdown(model, counts["tokens"], price=pricing.settings_price(settings, model))
    emit("chunks", counts["chunks"], MetricUnit.Count)
    emit("estimated_tokens", counts["tokens"], MetricUnit.Count)
    if rejected:
        emit("rejected_documents", len(rejected), MetricUnit.Count)
        logger.warning("documents left out", extra={"count": len(rejected), "first": shown})
    if skip.keys:
        emit("unchanged_documents", len(skip.keys), MetricUnit.Count)
    logger.info("chunked", extra={"uploads": len(request.uploads), "unchanged": len(skip.keys),
                                  **counts})  # fmt: skip
    return ChunkedJob(
        job_id=request.job_id,
        execution_arn=request.execution_arn,
        bucket=bucket,
        source=describe([u.key for u in latest]),
        model=settings.embedding_model,
        dimensions=settings.dimensions,
        manifest=manifest,
        outcomes=outcomes,
        uploads=len(request.uploads),
        chunks=counts["chunks"],
        tokens=counts["tokens"],
        estimate=CostEstimate(
            batch_usd=float(cost.batch_usd), standard_usd=float(cost.standard_usd)
        ),
        documents=counts["documents"],
        rejected_count=len(rejected),
        rejected=shown,
        deletes=deletes,
        delete_sequencers={u.key: sequencer_key(u.sequencer) for u in deleted},
        urgent_documents=counts["urgent"],
        unchanged=skip.keys[:MAX_REJECTED_SHOWN],
        unchanged_count=len(skip.keys),
    )

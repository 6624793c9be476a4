"""ChunkAndEstimate: read the object, extract text, chunk by tokens, estimate cost."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from .. import pricing
from ..aws import s3
from ..chunking import chunk_text
from ..documents import decode_document
from ..models import ChunkedJob, ChunkRequest, CostEstimate, DocumentRef, S3Location
from ..settings import Settings
from ..tokenizer import get_encoding

logger = Logger(child=True)
metrics = Metrics()


def manifest_key(job_id: str) -> str:
    """Work-bucket key of a job's chunk manifest."""
    return f"jobs/{job_id}/chunks.jsonl"


def chunk_and_estimate(request: ChunkRequest, settings: Settings) -> ChunkedJob:
    """Chunk the uploaded document and write its manifest (JSONL) to the work bucket.

    Manifest record: ``{"chunk_index", "text", "token_count", "sha256", "char_start",
    "char_end"}`` (offsets in characters of the normalised text).

    Returns:
        The job with exact token counts and its estimated cost (USD, batch and standard).

    Raises:
        InvalidDocumentError: empty, binary, not UTF-8, unsupported, over the size limit,
            or no text after extraction.
    """
    obj = request.event.detail.object
    bucket = request.event.detail.bucket.name
    data, etag = s3.read_document(
        bucket, obj.key, obj.version_id, max_bytes=settings.max_document_bytes
    )
    text = decode_document(
        obj.key,
        data,
        json_fields=settings.json_fields(),
        csv_columns=settings.csv_columns(),
        max_bytes=settings.max_document_bytes,
    )
    chunks = chunk_text(
        text,
        max_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        encoding=get_encoding(),
    )
    manifest = S3Location(bucket=settings.work_bucket, key=manifest_key(request.job_id))
    s3.write_jsonl(
        manifest.bucket,
        manifest.key,
        (
            {
                "chunk_index": c.index,
                "text": c.text,
                "token_count": c.token_count,
                "sha256": c.sha256,
                "char_start": c.char_start,
                "char_end": c.char_end,
            }
            for c in chunks
        ),
    )
    tokens = sum(c.token_count for c in chunks)
    cost = pricing.breakdown(settings.embedding_model, tokens)
    metrics.add_metric(name="chunks", unit=MetricUnit.Count, value=len(chunks))
    metrics.add_metric(name="estimated_tokens", unit=MetricUnit.Count, value=tokens)
    logger.info("chunked", extra={"key": obj.key, "chunks": len(chunks), "tokens": tokens})
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
        chunks=len(chunks),
        tokens=tokens,
        estimate=CostEstimate(
            batch_usd=float(cost.batch_usd), standard_usd=float(cost.standard_usd)
        ),
    )

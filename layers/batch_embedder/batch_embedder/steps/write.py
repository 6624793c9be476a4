"""FetchAndWrite: stream the new embeddings and write every chunk's vector to pgvector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..batch_files import parse_custom_id
from ..db import cache
from ..db.connection import connect_settings
from ..db.vectors import ChunkWriter
from ..errors import CacheNotReadyError, EmbeddingsIncompleteError
from ..metrics import emit
from ..models import WriteInput, WriteResult, WrittenJob
from ..openai_client import get_client
from ..openai_files import decode_embedding, iter_jsonl_file
from ..records import BatchOutputLine, ChunkRow, DocumentOutcome, EmbedRow
from ..settings import Settings

logger = Logger(child=True)


class _OutputReader:
    """Turns output records (Batch API or sync) into ``(sha256, vector)``, summing usage."""

    def __init__(self, job_id: str, seq_to_sha: dict[int, str]) -> None:
        self.job_id = job_id
        self.seq_to_sha = seq_to_sha
        self.billed_tokens = 0
        self.failed_requests = 0

    def vectors(
        self, records: Iterator[dict[str, Any]]
    ) -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
        for raw in records:
            line = BatchOutputLine.model_validate(raw)
            job_id, first, end = parse_custom_id(line.custom_id)
            if job_id != self.job_id:
                raise ValueError(f"output line of another job: {line.custom_id!r}")
            body = line.embeddings
            if body is None:
                self.failed_requests += 1
                continue
            self.billed_tokens += body.usage.total_tokens
            if len(body.data) != end - first:
                raise ValueError(
                    f"{line.custom_id}: {len(body.data)} vectors for {end - first} inputs"
                )
            for item in body.data:
                seq = first + item.index
                if not first <= seq < end or seq not in self.seq_to_sha:
                    raise ValueError(f"{line.custom_id}: index {item.index} out of range")
                yield self.seq_to_sha[seq], decode_embedding(item.embedding)


def fetch_and_write(job: WriteInput, settings: Settings) -> WrittenJob:
    """Write the job's vectors, all or nothing: new ones from the batches' output files and
    the sync output, the rest from the cache.

    Output lines are matched by ``custom_id`` and ``data[].index`` (the output is not in
    input order), streamed (never a whole file in memory) and bulk-COPY'd. The job's claims
    on the content it embedded are released in the same transaction.

    Raises:
        CacheNotReadyError: content another execution is embedding has not landed yet (the
            state machine retries).
        EmbeddingsIncompleteError: some chunks have no vector (their requests are in the
            error file); nothing is written.
        ValueError: an output line does not belong to this job or is malformed.
    """
    plan = job.embed
    seq_to_sha: dict[int, str] = {}
    if plan is not None and plan.manifest is not None:
        for raw in s3.iter_jsonl(plan.manifest.bucket, plan.manifest.key):
            row = EmbedRow.model_validate(raw)
            seq_to_sha[row.seq] = row.sha256
    excluded = set(job.excluded_prefixes)
    keys = sorted(
        o.key
        for o in (DocumentOutcome.model_validate(x)
                  for x in s3.iter_jsonl(job.outcomes.bucket, job.outcomes.key))
        if o.status == "accepted" and o.prefix not in excluded
    )  # fmt: skip
    batch_reader = _OutputReader(job.job_id, seq_to_sha)
    sync_reader = _OutputReader(job.job_id, seq_to_sha)
    with (
        connect_settings(settings) as conn,
        ChunkWriter(
            conn,
            bucket=job.bucket,
            lock_keys=keys,
            job_id=job.job_id,
            model=job.model,
            dimensions=job.dimensions,
        ) as writer,
    ):
        writer.copy_chunks(
            row
            for row in (
                ChunkRow.model_validate(x)
                for x in s3.iter_jsonl(job.manifest.bucket, job.manifest.key)
            )
            if row.prefix not in excluded
        )
        if job.final_batches:
            client = get_client(settings)
            for batch in job.final_batches:
                if batch.output_file_id:
                    writer.copy_vectors(
                        batch_reader.vectors(iter_jsonl_file(client, batch.output_file_id))
                    )
                if batch.error_file_id:
                    batch_reader.failed_requests += sum(
                        1 for _ in iter_jsonl_file(client, batch.error_file_id)
                    )
        for sync in job.sync_outputs:
            writer.copy_vectors(
                sync_reader.vectors(s3.iter_jsonl(sync.location.bucket, sync.location.key))
            )
        writer.fill_from_cache()
        missing = writer.missing()
        if missing:
            failed = batch_reader.failed_requests + sync_reader.failed_requests
            mine = set(seq_to_sha.values())
            if plan is not None and plan.awaited and not (set(missing) & mine) and not failed:
                raise CacheNotReadyError(
                    f"{job.source}: {len(missing)} content(s) are still being embedded "
                    "by another execution"
                )
            raise EmbeddingsIncompleteError(
                key=job.source,
                expected=job.chunks,
                received=job.chunks - writer.chunks_without_vector(),
                failed_requests=failed,
            )
        written, moved, deleted = writer.merge()
        cache.release_claims(conn, job.job_id)
    emit("vectors_written", written, MetricUnit.Count)
    logger.info(
        "written", extra={"vectors_written": written, "rows_moved": moved, "rows_deleted": deleted}
    )
    return WrittenJob(
        **job.model_dump(),
        written=WriteResult(
            vectors_written=written,
            rows_moved=moved,
            rows_deleted=deleted,
            billed_tokens=batch_reader.billed_tokens,
            sync_billed_tokens=sync_reader.billed_tokens,
            failed_requests=batch_reader.failed_requests + sync_reader.failed_requests,
        ),
    )

"""FetchAndWrite: stream the batch output and write every chunk's vector to pgvector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..batch_files import parse_custom_id
from ..db.connection import connect_settings
from ..db.vectors import ChunkWriter
from ..errors import EmbeddingsIncompleteError
from ..models import SubmittedJob, WriteResult, WrittenJob
from ..openai_client import get_client
from ..openai_files import decode_embedding, iter_jsonl_file
from ..settings import Settings

logger = Logger(child=True)
metrics = Metrics()


class _OutputReader:
    """Turns batch output records into ``(chunk_index, vector)`` and sums billed tokens."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.billed_tokens = 0
        self.failed_requests = 0

    def vectors(
        self, records: Iterator[dict[str, Any]]
    ) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
        for record in records:
            job_id, first, end = parse_custom_id(str(record["custom_id"]))
            if job_id != self.job_id:
                raise ValueError(f"output line of another job: {record['custom_id']!r}")
            response = record.get("response") or {}
            if record.get("error") or response.get("status_code") != 200:
                self.failed_requests += 1
                continue
            body = response["body"]
            self.billed_tokens += int(body["usage"]["total_tokens"])
            data = body["data"]
            if len(data) != end - first:
                raise ValueError(
                    f"{record['custom_id']}: {len(data)} vectors for {end - first} inputs"
                )
            for item in data:
                index = first + int(item["index"])
                if not first <= index < end:
                    raise ValueError(f"{record['custom_id']}: index {item['index']} out of range")
                yield index, decode_embedding(item["embedding"])


def fetch_and_write(job: SubmittedJob, settings: Settings) -> WrittenJob:
    """Write the document's vectors, all or nothing, from the completed batches' output.

    Output lines are matched by ``custom_id`` and ``data[].index`` (the output is not in
    input order), streamed (never a whole file in memory) and bulk-COPY'd.

    Raises:
        EmbeddingsIncompleteError: some chunks have no vector (their requests are in the
            error file); nothing is written.
        ValueError: an output line does not belong to this job or is malformed.
    """
    client = get_client(settings)
    reader = _OutputReader(job.job_id)
    with (
        connect_settings(settings) as conn,
        ChunkWriter(
            conn,
            bucket=job.document.bucket,
            lock_key=job.document.key,
            job_id=job.job_id,
            model=job.model,
            dimensions=job.dimensions,
        ) as writer,
    ):
        writer.copy_chunks(
            (
                int(r["seq"]),
                str(r["source_key"]),
                r["source_version"],
                int(r["chunk_index"]),
                str(r["text"]),
                str(r["sha256"]),
                int(r["token_count"]),
                int(r["char_start"]),
                int(r["char_end"]),
            )
            for r in s3.iter_jsonl(job.manifest.bucket, job.manifest.key)
        )
        for batch in job.batches:
            if batch.output_file_id:
                writer.copy_vectors(reader.vectors(iter_jsonl_file(client, batch.output_file_id)))
            if batch.error_file_id:
                reader.failed_requests += sum(
                    1 for _ in iter_jsonl_file(client, batch.error_file_id)
                )
        received = writer.vector_count()
        if received != job.chunks:
            raise EmbeddingsIncompleteError(
                key=job.document.key,
                expected=job.chunks,
                received=received,
                failed_requests=reader.failed_requests,
            )
        written, deleted = writer.merge()
    metrics.add_metric(name="vectors_written", unit=MetricUnit.Count, value=written)
    logger.info("written", extra={"vectors_written": written, "rows_deleted": deleted})
    return WrittenJob(
        **job.model_dump(),
        written=WriteResult(
            vectors_written=written,
            rows_deleted=deleted,
            billed_tokens=reader.billed_tokens,
            failed_requests=reader.failed_requests,
        ),
    )

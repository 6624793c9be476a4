"""Ingesting a batch's output into the content store, exactly once, whoever gets there first.

FetchAndWrite ingests the batches it waited for; the reconciler and the sweep ingest the
batches of an execution that is gone (failed, timed out, aborted). The output lines are
matched to the group's embed manifest by ``custom_id`` and ``data[].index`` (the output is
not in input order) and streamed, never held whole. The batch's purchase is stored with
its vectors in one transaction (``db/content.py``): a second ingest changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai
from aws_lambda_powertools import Logger

from ..aws import s3
from ..aws.registry import BatchRegistry
from ..db.content import ContentStore, batch_purchase
from ..models import BatchRef, S3Location
from ..openai.batch_files import parse_custom_id
from ..openai.files import decode_embedding, delete_files, iter_jsonl_file
from ..records import BatchOutputLine, EmbedRow

logger = Logger(child=True)

#: ``seq -> (content sha256, tokens)`` of a group's embed manifest.
Manifest = dict[int, tuple[str, int]]


def load_manifest(location: S3Location | None) -> Manifest:
    """The embed manifest (``jobs/<job>/embed.jsonl``) as ``seq -> (sha256, tokens)``."""
    if location is None:
        return {}
    manifest: Manifest = {}
    for raw in s3.iter_jsonl(location.bucket, location.key):
        row = EmbedRow.model_validate(raw)
        manifest[row.seq] = (row.sha256, row.token_count)
    return manifest


class OutputReader:
    """Turns output lines (Batch API shape) into ``(sha256, tokens, vector)``, summing the
    billed usage and counting failed lines."""

    def __init__(self, job_id: str, manifest: Manifest) -> None:
        self.job_id = job_id
        self.manifest = manifest
        self.billed_tokens = 0
        self.failed_requests = 0

    def vectors(
        self, records: Iterator[dict[str, Any]]
    ) -> Iterator[tuple[str, int, np.ndarray[Any, Any]]]:
        """The vectors of ``records``, each with its content hash and token count.

        Raises:
            ValueError: a line of another job, or a malformed line.
        """
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
                if not first <= seq < end or seq not in self.manifest:
                    raise ValueError(f"{line.custom_id}: index {item.index} out of range")
                sha, tokens = self.manifest[seq]
                yield sha, tokens, decode_embedding(item.embedding)


@dataclass(frozen=True)
class Ingested:
    """What ingesting one batch did: ``new`` is False when it had been ingested before."""

    batch_id: str
    new: bool
    vectors: int = 0
    billed_tokens: int = 0
    failed_requests: int = 0
    repaid_tokens: int = 0


def ingest_batch(
    api: openai.OpenAI,
    store: ContentStore,
    registry: BatchRegistry,
    *,
    job_id: str,
    ref: BatchRef,
    manifest: Manifest,
) -> Ingested:
    """Store a terminal batch's vectors and its billed tokens, once; then delete its output
    and error files at OpenAI and take it off the registry's open index.

    The billed tokens are the batch's ``usage`` when the API gives it (``ref.billed_tokens``),
    else the sum of its output lines' usage.

    Raises:
        openai.APIError: the output could not be read (nothing stored; try again).
        ValueError: a malformed output line (nothing stored).
    """
    purchase = batch_purchase(ref.batch_id)
    if store.has_purchase(purchase):
        registry.mark_ingested(ref.batch_id)
        return Ingested(batch_id=ref.batch_id, new=False)
    reader = OutputReader(job_id, manifest)
    records: Iterator[dict[str, Any]] = (
        iter_jsonl_file(api, ref.output_file_id) if ref.output_file_id else iter(())
    )
    stored = store.put(
        purchase,
        job_id=job_id,
        api="batch",
        billed_tokens=ref.billed_tokens
        if ref.billed_tokens is not None
        else (lambda: reader.billed_tokens),
        vectors=reader.vectors(records),
    )
    if ref.error_file_id:
        reader.failed_requests += sum(1 for _ in iter_jsonl_file(api, ref.error_file_id))
    registry.mark_ingested(ref.batch_id)
    delete_files(api, [ref.output_file_id, ref.error_file_id])
    billed = ref.billed_tokens if ref.billed_tokens is not None else reader.billed_tokens
    logger.info(
        "batch ingested",
        extra={"batch": ref.batch_id, "vectors": stored.vectors, "billed_tokens": billed},
    )
    return Ingested(
        batch_id=ref.batch_id,
        new=stored.new,
        vectors=stored.vectors,
        billed_tokens=billed,
        failed_requests=reader.failed_requests,
        repaid_tokens=stored.repaid_tokens,
    )

"""FetchAndWrite: keep every vector that came back, write every document that is complete,
and send what is missing round again.

1. Each terminal batch of the group is ingested into the content store (``steps.ingest``):
   its vectors and its billed tokens, in one transaction, once.
2. The group's documents are staged and their vectors read from the store. An object
   whose stored S3 event is newer (``sequencer``) is left out as ``superseded``. A
   document with every chunk's vector is merged into ``chunks`` (whole, atomically); one
   with a missing chunk is left as it was.
3. Contents of this group still without a vector (failed request lines, the unreturned
   part of an expired, failed or cancelled batch) become :class:`PendingWork`: embedded
   synchronously when an urgent document needs them or ``SYNC_FALLBACK`` is on, else in
   the next batch, for at most ``EMBED_ROUNDS`` rounds; then the execution ends in a
   named failure that lists the documents not written.
4. Contents another execution claimed and has not delivered are waited for
   (``CacheNotReadyError``, retried by the state machine for more than 24 h), unless the
   claim is gone (its execution failed) or its lease ran out: then this group takes the
   content over and buys it (step 3).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..aws.registry import batch_registry_for
from ..db import cache
from ..db.connection import connect_settings
from ..db.content import ContentStore, billed
from ..db.vectors import ChunkWriter
from ..errors import (
    BatchCancelledError,
    BatchExpiredError,
    BatchFailedError,
    CacheNotReadyError,
    EmbeddingsIncompleteError,
)
from ..metrics import emit
from ..models import EmbedPlan, PendingWork, S3Location, WriteInput, WriteResult, WrittenJob
from ..openai.client import get_client, provider_calls
from ..records import ChunkRow, DocumentOutcome, EmbedRow
from ..settings import Settings
from .batch import TERMINAL
from .chunk import describe, job_key
from .ingest import ingest_batch, load_manifest

logger = Logger(child=True)


def _pending(job: WriteInput, missing: set[str], round_: int) -> tuple[list[EmbedRow], str]:
    """The embed rows still to buy (from the embed manifest), for
    ``jobs/<job>/pending-<round>.jsonl``."""
    assert job.embed is not None and job.embed.manifest is not None
    rows = [
        row
        for row in (
            EmbedRow.model_validate(x)
            for x in s3.iter_jsonl(job.embed.manifest.bucket, job.embed.manifest.key)
        )
        if row.sha256 in missing
    ]
    key = job_key(job.job_id, f"pending-{round_}.jsonl")
    return rows, key


def _adopt(job: WriteInput, taken: set[str], settings: Settings, round_: int) -> WriteInput:
    """Add contents taken over from another execution to the group's embed manifest (new
    seqs after the last), as ``jobs/<job>/embed-<round>.jsonl``."""
    plan = job.embed
    old = (
        [EmbedRow.model_validate(x) for x in s3.iter_jsonl(plan.manifest.bucket, plan.manifest.key)]
        if plan is not None and plan.manifest is not None
        else []
    )
    seq = max((r.seq for r in old), default=-1) + 1
    added: dict[str, EmbedRow] = {}
    for x in s3.iter_jsonl(job.manifest.bucket, job.manifest.key):
        row = ChunkRow.model_validate(x)
        if row.sha256 in taken and row.sha256 not in added:
            added[row.sha256] = EmbedRow(seq=seq, sha256=row.sha256, text=row.text,
                                         token_count=row.token_count, urgent=row.urgent,
                                         prefixes=[row.prefix])  # fmt: skip
            seq += 1
    location = S3Location(
        bucket=settings.work_bucket, key=job_key(job.job_id, f"embed-{round_}.jsonl")
    )
    s3.write_jsonl(location.bucket, location.key, (r.model_dump() for r in [*old, *added.values()]))
    if plan is None:
        plan = EmbedPlan(api="batch", chunks=0, tokens=0, cache_hits=0, cached_tokens=0)
    plan = plan.model_copy(update={"manifest": location})
    return job.model_copy(update={"embed": plan})


def _out_of_rounds(job: WriteInput, incomplete: list[str], missing: int, round_: int) -> Exception:
    statuses = {b.status for b in job.final_batches}
    names = describe(incomplete) if incomplete else job.source
    text = (
        f"{names}: {missing} content(s) still have no vector after {round_} round(s); "
        "these documents were not written (every other document was)"
    )
    if "failed" in statuses:
        return BatchFailedError(f"{text}; a batch ended 'failed'")
    if "cancelled" in statuses:
        return BatchCancelledError(f"{text}; a batch was cancelled")
    if "expired" in statuses:
        return BatchExpiredError(f"{text}; a batch expired")
    return EmbeddingsIncompleteError(
        key=names,
        expected=job.chunks,
        received=job.chunks - missing,
        failed_requests=sum(b.failed_requests for b in job.final_batches),
        rounds=round_,
    )


def fetch_and_write(job: WriteInput, settings: Settings) -> WrittenJob:
    """Store the group's new vectors, write its complete documents, plan what is missing.

    Returns:
        The group with ``written`` and, when contents are still missing, ``pending``
        (the next round: ``sync`` or ``batch``).

    Raises:
        CacheNotReadyError: only content another execution is embedding is missing (the
            state machine retries; the complete documents are written already).
        BatchFailedError, BatchExpiredError, BatchCancelledError, EmbeddingsIncompleteError:
            contents are still missing after ``EMBED_ROUNDS`` rounds; the message names
            the documents not written.
        ValueError: an output line does not belong to this group or is malformed.
    """
    plan = job.embed
    manifest = load_manifest(plan.manifest if plan is not None else None)
    mine = {sha for sha, _ in manifest.values()}
    excluded = set(job.excluded_prefixes)
    keys = sorted({
        o.object_key or o.key
        for o in (DocumentOutcome.model_validate(x)
                  for x in s3.iter_jsonl(job.outcomes.bucket, job.outcomes.key))
        if o.status == "accepted" and o.prefix not in excluded
    })  # fmt: skip
    registry = batch_registry_for(settings)
    terminal = [b for b in job.final_batches if b.status in TERMINAL]
    with connect_settings(settings) as conn:
        store = ContentStore(conn, model=job.model, dimensions=job.dimensions)
        if terminal:
            api = get_client(settings)
            with provider_calls(settings, job_id=job.job_id, source=job.source):
                for ref in terminal:
                    ingest_batch(
                        api, store, registry, job_id=job.job_id, ref=ref, manifest=manifest
                    )
        with ChunkWriter(
            conn,
            bucket=job.bucket,
            lock_keys=keys,
            job_id=job.job_id,
            model=job.model,
            dimensions=job.dimensions,
        ) as writer:
            writer.copy_chunks(
                row
                for row in (
                    ChunkRow.model_validate(x)
                    for x in s3.iter_jsonl(job.manifest.bucket, job.manifest.key)
                )
                if row.prefix not in excluded
            )
            superseded = writer.drop_superseded()
            writer.fill_from_cache()
            missing = set(writer.missing())
            incomplete = writer.drop_incomplete()
            written, moved, deleted = writer.merge()
            if not missing:
                cache.release_claims(conn, job.job_id)
        others = missing - mine
        taken = (
            cache.claim(
                conn,
                others,
                model=job.model,
                dimensions=job.dimensions,
                job_id=job.job_id,
                lease_seconds=settings.claim_stale_seconds,
            )
            if others
            else set()
        )
        bill = billed(conn, job.job_id)
    round_ = job.embed_round + 1
    if taken:  # their claimer failed or its lease ran out: this group buys them now
        logger.warning("contents taken over from another execution", extra={"n": len(taken)})
        job = _adopt(job, taken, settings, round_)
        mine |= taken
    previous = job.written
    result = WriteResult(
        vectors_written=written + (previous.vectors_written if previous else 0),
        rows_moved=moved + (previous.rows_moved if previous else 0),
        rows_deleted=deleted + (previous.rows_deleted if previous else 0),
        billed_tokens=bill.batch_tokens,
        sync_billed_tokens=bill.sync_tokens,
        repaid_tokens=bill.repaid_tokens,
        failed_requests=sum(b.failed_requests for b in job.final_batches),
        incomplete=incomplete[:20],
        superseded=sorted({*superseded, *(previous.superseded if previous else [])}),
    )
    emit("vectors_written", written, MetricUnit.Count)
    logger.info(
        "written",
        extra={"vectors_written": written, "rows_moved": moved, "rows_deleted": deleted,
               "incomplete": len(incomplete), "superseded": len(superseded), "round": round_},
    )  # fmt: skip
    update: dict[str, object] = {"written": result, "embed_round": round_, "pending": None}
    mine_missing = missing & mine
    if not mine_missing:
        if missing:
            raise CacheNotReadyError(
                f"{describe(incomplete)}: {len(missing)} content(s) are still being embedded "
                "by another execution"
            )
        return WrittenJob(**job.model_dump(exclude={"written", "pending", "embed_round"}), **update)
    if round_ >= settings.embed_rounds:
        raise _out_of_rounds(job, incomplete, len(mine_missing), round_)
    rows, key = _pending(job, mine_missing, round_)
    s3.write_jsonl(settings.work_bucket, key, (r.model_dump() for r in rows))
    urgent = any(r.urgent for r in rows)
    pending = PendingWork(
        api="sync" if urgent or settings.sync_fallback else "batch",
        manifest=S3Location(bucket=settings.work_bucket, key=key),
        chunks=len(rows),
        tokens=sum(r.token_count for r in rows),
        documents=incomplete[:20],
    )
    emit("pending_contents", pending.chunks, MetricUnit.Count)
    logger.warning("contents still missing: another round", extra=pending.model_dump())
    update["pending"] = pending
    return WrittenJob(**job.model_dump(exclude={"written", "pending", "embed_round"}), **update)

"""The local model inside the pipeline: the ``local`` provider, and the ``local`` fallback
for urgent documents during a provider outage, re-embedded once the provider is back.

**``EMBEDDING_PROVIDER=local``**: EmbedSync stores every content with
:func:`store_locally` (the job's own purchases, priced 0): the budget, the content store
and the ledger count the model's word pieces like any synchronous purchase.

**``FALLBACK_PROVIDER=local``**, when EmbedSync's urgent phase finds the provider down
(its degraded record is set, or its requests end in ``ProviderUnavailableError``) and the
group has bought nothing from the provider yet (:func:`applies`,
:func:`bought_from_provider`):

1. every chunk of its urgent documents (cached ones included: the fallback's vectors are
   another model's) is embedded by the local model and stored in the content store under
   ``local-minilm`` / 384, as purchases of ``<job id>#fallback``
   (:func:`fallback_owner`), so that the job's own bill stays the provider's;
2. those tokens are committed to the ``model:local-minilm`` daily counter and written in
   a ledger record of ``<job id>#fallback`` (model ``local-minilm``, $0) -- counted, never
   refused (the model is free);
3. the objects are recorded in ``fallback_documents`` (``db/fallback.py``). A wholly
   urgent group (``embed.api == "sync"``) goes on with ``model = local-minilm``,
   ``dimensions = 384``: FetchAndWrite writes its rows with the fallback's model and the
   execution ends. In a mixed group (``sync+batch``) EmbedSync writes the urgent
   documents itself; the group keeps the provider's model and waits for the provider at
   BuildAndUploadJsonl; once it answers, its FetchAndWrite sends the urgent contents to
   a synchronous round, which buys them from the provider and replaces the rows.

**Recovery** (:func:`resubmit`, run by the reconciler): when ``fallback_documents`` has
objects due and the provider answers (``client.provider_answers``), each object's
fingerprints are removed and an "Object Created" event for its current S3 version (with
the sequencer its rows were written from) is sent to the upload queue. The normal
pipeline embeds it with the provider; its write deletes the fallback rows
(``ChunkWriter.merge``). An object not re-written within :data:`RESUBMIT_EVERY_SECONDS`
is sent again. (A mixed group's objects are re-embedded by the group itself: they are
due only if it has not done so after that time.)

A group that bought part of its content before the outage waits as a whole.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from ..aws import provider_health, s3
from ..aws.budget import budget_store_for, model_scope, utc_day
from ..aws.clients import client
from ..aws.ledger import ledger_store_for
from ..db import fallback as fallback_db
from ..db.connection import connect_settings
from ..db.content import ContentStore, billed, sync_purchase
from ..db.vectors import ChunkWriter
from ..local_model import DIMENSIONS, MODEL_NAME
from ..metrics import emit
from ..models import SyncOutput, WriteInput
from ..openai.client import provider_answers
from ..openai.local_provider import embed_local
from ..records import ChunkRow, LedgerRecord
from ..settings import Settings

logger = Logger(child=True)

#: Inputs per local "request" (one content-store checkpoint each).
LOCAL_INPUTS_PER_REQUEST = 256
#: The fallback's budget counter is counted, never a limit: the model is free.
UNLIMITED_TOKENS = 10**15
#: Seconds after which an object re-submitted but still not re-written is sent again.
RESUBMIT_EVERY_SECONDS = 3600
#: Objects the reconciler re-submits per run.
RESUBMIT_PER_RUN = 500


def fallback_owner(job_id: str) -> str:
    """The owner of a job's fallback purchases, budget item and ledger record."""
    return f"{job_id}#fallback"


def store_locally(
    conn: Any, *, owner: str, contents: Iterable[tuple[str, str]], per_request: int
) -> SyncOutput:
    """Embed ``contents`` (``(sha256, text)``) with the local model into the content store
    (``local-minilm``, 384), as purchases of ``owner``; what is stored already is skipped,
    so a retried step embeds only the rest.

    Args:
        conn: a connection from ``connect_settings``.
        per_request: contents per purchase (a checkpoint each).

    Returns:
        The run's counts: contents embedded, word pieces billed (price 0), purchases.

    Raises:
        LocalModelUnavailableError: the ``local-model`` extra is not installed.
    """
    store = ContentStore(conn, model=MODEL_NAME, dimensions=DIMENSIONS)
    unique = dict(contents)
    stored = store.stored(unique)
    todo = [(sha, text) for sha, text in unique.items() if sha not in stored]
    attempt = uuid.uuid4().hex[:8]
    billed_tokens = requests = 0
    for start in range(0, len(todo), per_request):
        part = todo[start : start + per_request]
        result = embed_local([text for _, text in part])
        store.put(
            sync_purchase(owner, f"local-{start}-{start + len(part)}:{attempt}"),
            job_id=owner,
            api="sync",
            billed_tokens=result.billed_tokens,
            vectors=(
                (sha, tokens, vector)
                for (sha, _), tokens, vector in zip(
                    part, result.tokens, result.vectors, strict=True
                )
            ),
        )
        billed_tokens += result.billed_tokens
        requests += 1
    return SyncOutput(chunks=len(todo), billed_tokens=billed_tokens, requests=requests,
                      rate_limited=0)  # fmt: skip


def applies(job: WriteInput, settings: Settings) -> bool:
    """Whether an outage in EmbedSync may fall back to the local model for this job: the
    fallback is on, this is the urgent phase of a group with urgent documents, and the
    job's model is not the local model already."""
    return (
        settings.fallback_provider == "local"
        and job.pending is None
        and job.embed is not None
        and job.embed.api in ("sync", "sync+batch")
        and job.model != MODEL_NAME
    )


def degraded(settings: Settings) -> bool:
    """Whether the provider is recorded as not answering (``aws/provider_health.py``)."""
    return provider_health.current(settings) is not None


def bought_from_provider(settings: Settings, job_id: str) -> bool:
    """Whether the job has bought anything from the provider (stored, lost or sent)."""
    with connect_settings(settings) as conn:
        row = conn.execute(
            "SELECT 1 FROM batch_embedder.purchases WHERE job_id = %s LIMIT 1", (job_id,)
        ).fetchone()
    return row is not None


def embed_with_fallback(job: WriteInput, settings: Settings) -> WriteInput:
    """Embed the group's urgent documents with the local model (module doc, 1-3).

    A wholly urgent group (``sync``) goes on with the local model: FetchAndWrite writes
    it. In a mixed group (``sync+batch``) the urgent documents are written here, with the
    local model; the group keeps the provider's model and waits for it at
    BuildAndUploadJsonl, and its FetchAndWrite buys and writes the urgent documents' own
    vectors afterwards (a synchronous round), replacing these rows.

    Returns:
        The job with this run's :class:`SyncOutput`; for a wholly urgent group, with
        ``model = local-minilm`` and ``dimensions = 384``.

    Raises:
        LocalModelUnavailableError: the ``local-model`` extra is not in the layer.
    """
    owner = fallback_owner(job.job_id)
    excluded = set(job.excluded_prefixes)
    whole = job.embed is not None and job.embed.api == "sync"
    chunks = [
        row
        for row in (ChunkRow.model_validate(x) for x in s3.iter_jsonl(job.manifest.bucket,
                                                                      job.manifest.key))
        if row.prefix not in excluded and (whole or row.urgent)
    ]  # fmt: skip
    with connect_settings(settings) as conn:
        output = store_locally(
            conn,
            owner=owner,
            contents=((c.sha256, c.text) for c in chunks),
            per_request=LOCAL_INPUTS_PER_REQUEST,
        )
        documents = {c.object_key or c.source_key for c in chunks}
        if not whole:
            documents = _write(conn, job, chunks)
        fallback_db.record(
            conn,
            bucket=job.bucket,
            object_keys=documents,
            model=MODEL_NAME,
            dimensions=DIMENSIONS,
            primary_model=job.model,
            primary_dimensions=job.dimensions,
            job_id=job.job_id,
            hold=not whole,
        )
        bill = billed(conn, owner)
    _count(settings, owner, job, bill.tokens, len(documents))
    emit("fallback_documents", len(documents), MetricUnit.Count)
    logger.warning(
        "provider unavailable: embedded with the local fallback",
        extra={"documents": len(documents), "chunks": output.chunks, "model": MODEL_NAME,
               "tokens": output.billed_tokens},
    )  # fmt: skip
    update: dict[str, object] = {"sync_outputs": [*job.sync_outputs, output]}
    if whole:
        update.update(model=MODEL_NAME, dimensions=DIMENSIONS)
    return job.model_copy(update=update)


def _write(conn: Any, job: WriteInput, chunks: list[ChunkRow]) -> set[str]:
    """Write the urgent documents' ``chunks`` with the local model's vectors (from the
    content store), as FetchAndWrite would; returns the objects written (not superseded
    by a newer event)."""
    objects = {c.object_key or c.source_key for c in chunks}
    with ChunkWriter(conn, bucket=job.bucket, lock_keys=sorted(objects), job_id=job.job_id,
                     model=MODEL_NAME, dimensions=DIMENSIONS) as writer:  # fmt: skip
        writer.copy_chunks(chunks)
        superseded = set(writer.drop_superseded())
        writer.fill_from_cache()
        incomplete = set(writer.drop_incomplete())
        writer.merge()
    return objects - superseded - incomplete


def _count(settings: Settings, owner: str, job: WriteInput, tokens: int, documents: int) -> None:
    """Commit the fallback's tokens to the ``model:local-minilm`` counter and write its
    ledger record ($0), once per bill (a retry commits only what the bill grew by)."""
    store = budget_store_for(settings)
    reservation = store.reserve(
        job_id=owner,
        key=job.source,
        tokens=tokens,
        scopes=[model_scope(MODEL_NAME, UNLIMITED_TOKENS)],
        model=MODEL_NAME,
    )
    store.settle(job_id=owner, billed_tokens=tokens, outcome="committed")
    ledger_store_for(settings).put(
        LedgerRecord(
            job_id=owner,
            source=job.source,
            day=reservation.day,
            model=MODEL_NAME,
            status="SUCCEEDED",
            api="sync",
            documents=documents,
            tokens=tokens,
            cause=f"{job.source}: the provider did not answer; embedded with the local "
            f"fallback, to be re-embedded with {job.model} once it answers",
        )
    )


def upload_event(doc: fallback_db.FallbackDocument, head: dict[str, Any]) -> dict[str, Any]:
    """The EventBridge "Object Created" event of ``doc``'s current S3 version (``head``:
    a HeadObject answer), in the shape the upload queue receives from the rules
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html), carrying the
    sequencer its stored rows were written from, so the ordering checks let it through."""
    detail_object: dict[str, Any] = {
        "key": doc.object_key,
        "size": int(head.get("ContentLength", 0)),
        "etag": str(head.get("ETag", "")).strip('"'),
        "sequencer": doc.sequencer,
    }
    version = head.get("VersionId")
    if version and version != "null":
        detail_object["version-id"] = version
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resources": [f"arn:aws:s3:::{doc.bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": doc.bucket},
            "object": detail_object,
            "reason": "PutObject",
        },
    }


def resubmit(settings: Settings) -> int:
    """Re-submit the objects the fallback embedded, once the provider answers (module doc,
    "Recovery"). Never raises (an outage, a deleted object, a missing queue, the
    database down): the next run tries again.

    Returns:
        Objects re-submitted by this run.
    """
    if settings.fallback_provider != "local":
        return 0
    try:
        return _resubmit(settings)
    except Exception:  # the database or AWS down: the next run tries again
        logger.exception("could not re-submit the fallback documents; next run")
        return 0


def _resubmit(settings: Settings) -> int:
    with connect_settings(settings) as conn:
        docs = fallback_db.due(conn, every_seconds=RESUBMIT_EVERY_SECONDS, limit=RESUBMIT_PER_RUN)
        if not docs or not provider_answers(settings, settings.embedding_model):
            return 0
        queue = settings.upload_queue_url
        if not queue:
            logger.warning("fallback documents to re-embed, but UPLOAD_QUEUE_URL is not set")
            return 0
        sent = 0
        for doc in docs:
            try:
                head = client("s3").head_object(Bucket=doc.bucket, Key=doc.object_key)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (404, 405):  # deleted (or a delete marker): nothing to re-embed
                    fallback_db.forget(conn, doc.bucket, doc.object_key)
                    continue
                raise
            fallback_db.forget_fingerprints(conn, doc.bucket, doc.object_key)
            event = json.dumps(upload_event(doc, head))
            client("sqs").send_message(QueueUrl=queue, MessageBody=event)
            fallback_db.mark_resubmitted(conn, doc.bucket, doc.object_key)
            sent += 1
    if sent:
        emit("fallback_resubmitted", sent, MetricUnit.Count)
        logger.info("fallback documents re-submitted", extra={"documents": sent, "day": utc_day()})
    return sent

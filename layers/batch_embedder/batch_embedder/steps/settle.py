"""Settling a job's money from the content store, whoever ends it.

The bill of a job is what the content store recorded for it (``db/content.py``): every
batch output and synchronous request it paid for, stored with its vectors. Whoever ends
a job brings DynamoDB's committed usage and the ledger up to that bill:

- RecordCost and RecordFailure, when the execution ends;
- the reconciler, when an execution is gone (failed, timed out, aborted) while one of its
  batches still ran: it cancels the batch, ingests what it returned and settles again;
- the sweep, for a reservation held past ``RESERVATION_HOLD_SECONDS``.

Because the store records each purchase once and
:meth:`~batch_embedder.aws.budget.BudgetStore.settle`
commits only what the bill grew by, billed == committed == ledger however many of them
run, in whatever order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import openai
from aws_lambda_powertools import Logger

from ..aws.budget import budget_store_for, utc_day
from ..aws.jobs import job_store_for
from ..aws.ledger import ledger_store_for
from ..aws.registry import BatchRegistry, RegisteredBatch, batch_registry_for
from ..db import cache
from ..db.connection import connect_settings
from ..db.content import Billed, ContentStore, billed
from ..models import BatchRef
from ..openai import pricing
from ..openai.client import get_client
from ..openai.files import delete_files
from ..records import LedgerRecord, usd
from ..settings import Settings
from .batch import TERMINAL, release_queue, to_ref, usage_tokens
from .ingest import ingest_batch, load_manifest

logger = Logger(child=True)


@dataclass
class Adopted:
    """What :func:`collect_batches` did with a job's batches."""

    refs: list[BatchRef] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    ingested: list[str] = field(default_factory=list)
    running: int = 0
    errors: list[str] = field(default_factory=list)


def collect_batches(settings: Settings, job_id: str, *, cancel_running: bool = True) -> Adopted:
    """Bring in every batch of a job whose execution no longer waits for them.

    Running batches are cancelled (nobody will read them); terminal ones are ingested into
    the content store (their vectors kept, their tokens recorded) and their queue tokens
    given back; input files no running batch reads are deleted. A batch OpenAI cannot be
    asked about right now is left for the reconciler's next run (it stays on the open
    index).
    """
    registry = batch_registry_for(settings)
    api = get_client(settings)
    adopted = Adopted()
    _, batches = registry.group(job_id)
    for registered in batches:
        try:
            ref = _bring_in(settings, api, registry, registered, cancel_running, adopted)
        except Exception as exc:  # OpenAI or the database down: the reconciler tries again
            adopted.errors.append(f"{registered.batch_id}: {exc}")
            logger.warning("batch left for the reconciler", extra={"batch": registered.batch_id})
            continue
        if ref is not None:
            adopted.refs.append(ref)
    # Input files no running batch reads (a round whose batches were never created, a
    # batch that ended) are deleted now rather than at their expiry.
    running = {r.input_file_id for r in adopted.refs if r.status not in TERMINAL}
    uploaded = job_store_for(settings).uploaded_file_ids(job_id)
    leftover = [f for f in uploaded if f not in running]
    delete_files(api, list(leftover))
    return adopted


def _bring_in(
    settings: Settings,
    api: openai.OpenAI,
    registry: BatchRegistry,
    registered: RegisteredBatch,
    cancel_running: bool,
    adopted: Adopted,
) -> BatchRef | None:
    if registered.ingested:
        return registered.ref
    ref = registered.ref
    if ref is None:
        batch = api.batches.retrieve(registered.batch_id)
        if batch.status not in TERMINAL:
            adopted.running += 1
            if cancel_running and batch.status != "cancelling":
                api.batches.cancel(registered.batch_id)
                adopted.cancelled.append(registered.batch_id)
            return to_ref(batch)
        ref = to_ref(batch).model_copy(update={"billed_tokens": usage_tokens(batch)})
        registry.mark_terminal(ref)
        release_queue(settings, registered.owner, registered.model, [registered.input_file_id])
    with connect_settings(settings) as conn:
        store = ContentStore(conn, model=registered.model, dimensions=registered.dimensions)
        ingest_batch(
            api,
            store,
            registry,
            job_id=registered.owner,
            ref=ref,
            manifest=load_manifest(registered.manifest),
        )
    adopted.ingested.append(registered.batch_id)
    return ref


def job_bill(settings: Settings, job_id: str) -> Billed:
    """What the content store recorded as billed to ``job_id``."""
    with connect_settings(settings) as conn:
        return billed(conn, job_id)


def release_claims(settings: Settings, job_id: str) -> None:
    """Let other executions embed what this job had claimed (best effort: a claim's lease
    runs out anyway)."""
    try:
        with connect_settings(settings) as conn, conn.transaction():
            cache.release_claims(conn, job_id)
    except Exception:
        logger.exception("could not release the job's content claims; their lease will run out")


def openai_cost(price: pricing.Price, bill: Billed) -> tuple[float, float]:
    """``(cost, cost at the standard price)`` of a bill in USD: batch tokens at the batch
    price, synchronous ones at the standard price (``openai/pricing.py``)."""
    cost = pricing.cost_usd(bill.batch_tokens, price.batch) + pricing.cost_usd(
        bill.sync_tokens, price.standard
    )
    return float(cost), float(pricing.cost_usd(bill.tokens, price.standard))


def resettle(settings: Settings, job_id: str, *, model: str, reason: str) -> Billed:
    """Bring committed usage and the ledger up to the job's bill (after a late ingest).

    The ledger record keeps what RecordCost/RecordFailure wrote; only its money fields
    change. A job that never reached either (an aborted execution) gets a FAILED record
    naming ``reason``.
    """
    bill = job_bill(settings, job_id)
    jobs = job_store_for(settings)
    item = jobs.get(job_id)
    budget_store_for(settings).settle(job_id=job_id, billed_tokens=bill.tokens, outcome="swept")
    cost, standard = openai_cost(pricing.settings_price(settings, model), bill)
    day = item.reservation_day or utc_day()
    ledger_store_for(settings).update_money(
        LedgerRecord(
            job_id=job_id,
            source=item.source_key,
            day=day,
            model=model,
            status="FAILED",
            cause=reason,
            tokens=bill.tokens,
            repaid_tokens=bill.repaid_tokens,
            cost_usd=usd(cost),
            standard_cost_usd=usd(standard),
            saved_usd=usd(standard - cost),
        )
    )
    if not item.finished:  # the execution never reached RecordCost or RecordFailure
        release_claims(settings, job_id)
        jobs.mark_failed(job_id, failed_state="PipelineError", cause=reason)
    logger.info("job settled again", extra={"job_id": job_id, "billed_tokens": bill.tokens})
    return bill

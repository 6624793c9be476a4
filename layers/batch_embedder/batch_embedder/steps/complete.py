"""WaitForBatches, the webhook receiver and the reconciler: finishing a group's wait.

Nothing polls per document or per group. WaitForBatches is a ``.waitForTaskToken`` task:
it stores the task token in the batch registry and returns; Step Functions then waits
without transitions. The wait ends when every batch of the group is terminal:

- **the webhook receiver** (a Lambda Function URL) gets OpenAI's ``batch.*`` event,
  verifies its signature with the SDK, retrieves the batch and records it;
- **the reconciler** (scheduled every ``ReconcileMinutes``) retrieves every open batch of
  the deployment: it covers lost webhooks and accounts without webhooks, and brings in
  the batches of executions that are gone (``steps.settle``).

Whoever records the last terminal batch of a group sends ``SendTaskSuccess`` with a
:class:`BatchesOutcome`. Both sides store first and read second (the waiter stores the
token then reads the batches; the completer stores the batch then reads the token), so
one of them always sees the other; a second SendTaskSuccess for the same token is refused
by Step Functions and ignored here, so the wait ends exactly once.
"""

from __future__ import annotations

import base64
import json

import openai
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError
from openai.types import Batch
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchExpiredWebhookEvent,
    BatchFailedWebhookEvent,
)
from pydantic import BaseModel

from ..aws import metering, provider_health
from ..aws.clients import client
from ..aws.jobs import job_store_for
from ..aws.registry import BatchRegistry, RegisteredBatch, batch_registry_for
from ..aws.secrets import webhook_secret
from ..metrics import emit
from ..models import BatchesOutcome, SubmittedJob
from ..openai.client import OUTAGE_ERRORS, get_client
from ..openai.files import delete_files
from ..service_models import (
    FunctionUrlRequest,
    ReconcileResult,
    ScheduledEvent,
    WaitAck,
    WaitRequest,
)
from ..settings import Settings
from . import fallback
from .batch import TERMINAL, overall_status, release_queue, to_ref, usage_tokens
from .settle import collect_batches, resettle

logger = Logger(child=True)

#: Errors of SendTaskSuccess that mean "this wait is already over": ignored.
#: https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskSuccess.html
CLOSED_TOKEN_ERRORS = frozenset({"TaskDoesNotExist", "TaskTimedOut", "InvalidToken"})
#: The batch events OpenAI sends (https://platform.openai.com/docs/guides/webhooks).
BATCH_EVENT_TYPES = (
    BatchCompletedWebhookEvent,
    BatchFailedWebhookEvent,
    BatchExpiredWebhookEvent,
    BatchCancelledWebhookEvent,
)


class WebhookResponse(BaseModel):
    """A Lambda Function URL response (payload format 2.0): status code and a JSON body."""

    statusCode: int
    body: str

    @classmethod
    def of(cls, status: int, message: str) -> WebhookResponse:
        """A response with ``{"message": ...}`` as its body."""
        return cls(statusCode=status, body=json.dumps({"message": message}))


def _registry(settings: Settings) -> BatchRegistry:
    return batch_registry_for(settings)


def complete_if_done(settings: Settings, job_id: str) -> bool:
    """Send the group's outcome if its token is stored and all its batches are terminal.

    Returns:
        True if this call ended the wait (False: not done, no token yet, or already ended).
    """
    token, batches = _registry(settings).group(job_id)
    if token is None or not batches or any(b.ref is None for b in batches):
        return False
    refs = [b.ref for b in batches if b.ref is not None]
    status = overall_status([r.status for r in refs])
    outcome = BatchesOutcome(
        status=status,
        batches=refs,
        aws=metering.snapshot(),
    )
    try:
        client("stepfunctions").send_task_success(taskToken=token, output=outcome.model_dump_json())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in CLOSED_TOKEN_ERRORS:
            logger.info("wait already ended", extra={"job_id": job_id})
            return False
        raise
    emit("batch_waits_completed", 1, MetricUnit.Count)
    logger.info("wait ended", extra={"job_id": job_id, "status": status})
    return True


def record_batch(settings: Settings, batch: Batch) -> bool:
    """Record a retrieved batch; when it is terminal, free its queue tokens, delete its input
    file at OpenAI, and complete its group if it was the last one.

    Returns:
        True if this ended a group's wait.
    """
    if batch.status not in TERMINAL:
        return False
    ref = to_ref(batch).model_copy(update={"billed_tokens": usage_tokens(batch)})
    registered = _registry(settings).mark_terminal(ref)
    if registered is None:
        logger.warning("terminal batch not in the registry: ignored", extra={"batch": batch.id})
        return False
    release_queue(settings, registered.owner, registered.model, [registered.input_file_id])
    delete_files(get_client(settings), [batch.input_file_id])  # nothing reads it any more
    return complete_if_done(settings, registered.owner)


def wait_for_batches(request: WaitRequest, settings: Settings) -> WaitAck:
    """WaitForBatches: store the task token, then finish at once if the batches are done.

    A webhook that arrived before the token was stored has already recorded its batch, so
    this call sees it and sends the outcome itself.

    Returns:
        An acknowledgement (Step Functions ignores it: the task's result is what
        SendTaskSuccess sends).
    """
    job = SubmittedJob.model_validate(request.job)
    _registry(settings).store_task_token(job.job_id, request.task_token)
    done = complete_if_done(settings, job.job_id)
    return WaitAck(job_id=job.job_id, batches=len(job.batches), completed_now=done)


def _header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name), "")


def receive_webhook(event: FunctionUrlRequest, settings: Settings) -> WebhookResponse:
    """The webhook receiver: verify, drop repeats, retrieve the batch, record it.

    ``event`` is a Lambda Function URL request (payload 2.0). The signature is checked with
    the SDK (``client.webhooks.unwrap``, Standard Webhooks: HMAC-SHA256 over
    ``id.timestamp.body``, 300 s tolerance) against the secret in Secrets Manager, before
    anything in the body is trusted.

    Returns:
        400 for an unsigned, forged or stale delivery (nothing changed); 200 otherwise
        (a repeat, an unknown batch or another event type are logged and acknowledged).
        A retrieve that fails (OpenAI down) raises: the Function URL answers 500 and
        OpenAI delivers again; one that succeeds clears a recorded outage.
    """
    headers = dict(event.headers)
    body = event.body
    if event.isBase64Encoded:
        body = base64.b64decode(body).decode("utf-8")
    api = get_client(settings)
    try:
        unwrapped = api.webhooks.unwrap(body, headers, secret=webhook_secret(settings))
    except (openai.InvalidWebhookSignatureError, ValueError) as exc:
        emit("webhook_signature_failures", 1, MetricUnit.Count)
        logger.warning("webhook refused", extra={"reason": str(exc)[:200]})
        return WebhookResponse.of(400, "invalid signature")
    if not isinstance(unwrapped, BATCH_EVENT_TYPES):
        return WebhookResponse.of(200, "ignored")
    webhook_id = _header(headers, "webhook-id")
    registry = _registry(settings)
    batch_id = unwrapped.data.id
    if registry.get(batch_id) is None:
        logger.info("webhook for a batch this deployment does not know", extra={"batch": batch_id})
        return WebhookResponse.of(200, "unknown batch")
    if webhook_id and registry.handled(webhook_id):
        emit("webhook_repeats", 1, MetricUnit.Count)
        return WebhookResponse.of(200, "duplicate")
    # Remembered only once handled: a delivery that fails midway (OpenAI unreachable) is
    # retried by OpenAI and handled again; handling twice is harmless (idempotent).
    batch = api.batches.retrieve(batch_id)
    provider_health.recovered(settings)  # OpenAI answered: end a recorded outage
    record_batch(settings, batch)
    if webhook_id:
        registry.first_delivery(webhook_id)
    return WebhookResponse.of(200, "ok")


def _owner_alive(settings: Settings, registered: RegisteredBatch) -> bool:
    """Whether the batch's execution still runs (so it will ingest the batch itself)."""
    if job_store_for(settings).get(registered.owner).finished:
        return False  # RecordCost or RecordFailure ran
    if not registered.execution_arn:
        return True
    try:
        described = client("stepfunctions").describe_execution(
            executionArn=registered.execution_arn
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
            return False
        raise
    return str(described["status"]) == "RUNNING"


def reconcile(_event: ScheduledEvent, settings: Settings) -> ReconcileResult:
    """The reconciler: retrieve every open batch once and record the terminal ones; bring
    in the batches whose execution is gone.

    A batch stays open until its output is in the content store. When its execution has
    ended (failed, timed out, aborted), the reconciler cancels it if it still runs (nobody
    will read it), ingests what it returned, and settles the owner's money again
    (``steps.settle``): no paid batch is abandoned. Its cost is per open batch per run
    (``ReconcileMinutes``), never per document.

    During an outage (connection errors, timeouts, 5xx) each batch it cannot reach is left
    for the next run and the outage is recorded (``aws/provider_health.py``: the
    ``ProviderDegraded`` metric); a run that reaches OpenAI again clears it. It never
    fails for an outage.
    """
    api = get_client(settings)
    registry = _registry(settings)
    open_batches: list[RegisteredBatch] = registry.open_batches()
    finished = sent = cancelled = 0
    answered, outage = False, ""
    alive: dict[str, bool] = {}
    orphans: dict[str, str] = {}
    for registered in open_batches:
        if registered.owner not in alive:
            alive[registered.owner] = _owner_alive(settings, registered)
        owner_alive = alive[registered.owner]
        if registered.ref is None:
            try:
                batch = api.batches.retrieve(registered.batch_id)
                answered = True
                if batch.status in TERMINAL:
                    finished += 1
                    sent += int(record_batch(settings, batch))
                elif not owner_alive and batch.status != "cancelling":
                    api.batches.cancel(registered.batch_id)
                    cancelled += 1
                    continue
                else:
                    continue
            except openai.APIError as exc:
                if isinstance(exc, OUTAGE_ERRORS):
                    outage = f"{type(exc).__name__}: {exc}"
                logger.exception("could not reach a batch; next run", extra={"batch": registered})
                continue
        if not owner_alive:
            orphans[registered.owner] = registered.model
    if outage:
        provider_health.record_outage(settings, error=outage, job_id=None)
    elif answered:
        provider_health.recovered(settings)
    adopted = 0
    for owner, model in orphans.items():
        collected = collect_batches(settings, owner)
        adopted += len(collected.ingested)
        resettle(settings, owner, model=model, reason=f"{owner}: execution ended before its "
                 "batches did; the reconciler stored their vectors and settled them")  # fmt: skip
    fallback.resubmit(settings)  # FALLBACK_PROVIDER=local: re-embed once the provider answers
    emit("batches_in_flight", len(open_batches) - finished, MetricUnit.Count)
    if adopted:
        emit("batches_adopted", adopted, MetricUnit.Count)
    return ReconcileResult(
        open_batches=len(open_batches),
        finished=finished,
        completions_sent=sent,
        cancelled=cancelled,
        adopted=adopted,
    )

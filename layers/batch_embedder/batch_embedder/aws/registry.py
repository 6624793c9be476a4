"""The batch registry: one DynamoDB item per OpenAI batch, in ``JOBS_TABLE``.

The registry owns a batch's lifecycle beyond any one state: CreateBatch registers it,
WaitForBatches stores the group's task token, and whoever first sees the batch terminal
(the webhook receiver or the reconciler) records its final :class:`BatchRef` and, once
every batch of the group is terminal, completes the waiting task.

Items (key ``job_id``):

- ``batch#<batch id>``: ``owner`` (the group's job id), ``execution_arn`` (the owner's
  execution), ``model``, ``dimensions``, ``manifest`` (the group's embed manifest,
  ``bucket/key``), ``input_file_id``, ``status``, ``ref`` (the final BatchRef as JSON once
  terminal), ``created_at``; until its output is stored in the content store (ingested)
  also ``open_shard = "open"``, the sparse ``OpenBatches`` index the reconciler reads (one
  query, never a scan). The registry owns the batch: when its execution is gone, the
  reconciler still ingests its output and settles its money.
- ``<job id>``: the group's item gains ``batch_ids`` (a string set) and ``task_token``.
- ``webhook#<webhook-id>``: a delivery already handled (expires after 3 days, the longest
  OpenAI retries a delivery: https://platform.openai.com/docs/guides/webhooks).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..models import BatchRef, S3Location
from .dynamodb import ddb
from .jobs import HasJobsTable

OPEN_SHARD = "open"
OPEN_INDEX = "OpenBatches"
#: How long a handled webhook id is remembered, seconds (OpenAI retries for up to 72 h).
WEBHOOK_MEMORY_SECONDS = 3 * 24 * 3600


def _batch_key(batch_id: str) -> dict[str, str]:
    return {"job_id": f"batch#{batch_id}"}


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


@dataclass(frozen=True)
class RegisteredBatch:
    """A batch as the registry knows it: ``ref`` is set once the batch is terminal."""

    batch_id: str
    owner: str
    model: str
    input_file_id: str
    status: str
    ref: BatchRef | None
    dimensions: int = 0
    execution_arn: str | None = None
    manifest: S3Location | None = None
    ingested: bool = False


def _from_item(item: dict[str, Any]) -> RegisteredBatch:
    raw = item.get("ref")
    manifest = str(item.get("manifest", ""))
    bucket, _, key = manifest.partition("/")
    return RegisteredBatch(
        batch_id=str(item["job_id"]).removeprefix("batch#"),
        owner=str(item["owner"]),
        model=str(item.get("model", "")),
        input_file_id=str(item.get("input_file_id", "")),
        status=str(item.get("status", "validating")),
        ref=BatchRef.model_validate_json(str(raw)) if raw else None,
        dimensions=int(item.get("dimensions", 0)),
        execution_arn=str(item["execution_arn"]) if item.get("execution_arn") else None,
        manifest=S3Location(bucket=bucket, key=key) if key else None,
        ingested=bool(item.get("ingested", False)),
    )


class BatchRegistry:
    """The registry in one table; bind once with the table name (``JOBS_TABLE``)."""

    def __init__(self, table: str) -> None:
        self.table = table

    def register(
        self,
        job_id: str,
        model: str,
        ref: BatchRef,
        *,
        dimensions: int,
        manifest: S3Location,
        execution_arn: str | None,
    ) -> None:
        """Record a created batch as open and add it to its group (idempotent)."""
        extra: dict[str, Any] = {"execution_arn": execution_arn} if execution_arn else {}
        try:
            ddb().put_item(
                TableName=self.table,
                Item={
                    **_batch_key(ref.batch_id),
                    **extra,
                    "owner": job_id,
                    "model": model,
                    "dimensions": dimensions,
                    "manifest": f"{manifest.bucket}/{manifest.key}",
                    "input_file_id": ref.input_file_id,
                    "status": ref.status,
                    "open_shard": OPEN_SHARD,
                    "created_at": int(time.time()),
                },
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        ddb().update_item(
            TableName=self.table,
            Key={"job_id": job_id},
            UpdateExpression="ADD batch_ids :b",
            ExpressionAttributeValues={":b": {ref.batch_id}},
        )

    def store_task_token(self, job_id: str, token: str) -> None:
        """Remember the token WaitForBatches waits with (a retry stores its new one)."""
        ddb().update_item(
            TableName=self.table,
            Key={"job_id": job_id},
            UpdateExpression="SET task_token = :t",
            ExpressionAttributeValues={":t": token},
        )

    def get(self, batch_id: str) -> RegisteredBatch | None:
        """The registered batch, or None for a batch this deployment never created."""
        item = (
            ddb()
            .get_item(TableName=self.table, Key=_batch_key(batch_id), ConsistentRead=True)
            .get("Item")
        )
        return _from_item(item) if item else None

    def mark_terminal(self, ref: BatchRef) -> RegisteredBatch | None:
        """Record the batch's final state (it stays on the open index until ingested).

        Returns:
            The registered batch (with ``ref``), or None if the batch is not registered.
        """
        try:
            item = ddb().update_item(
                TableName=self.table,
                Key=_batch_key(ref.batch_id),
                UpdateExpression="SET #s = :s, #r = :r",
                ConditionExpression="attribute_exists(job_id)",
                ExpressionAttributeNames={"#s": "status", "#r": "ref"},
                ExpressionAttributeValues={":s": ref.status, ":r": ref.model_dump_json()},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if _conditional_failed(exc):
                return None
            raise
        return _from_item(item)

    def mark_ingested(self, batch_id: str) -> None:
        """Record that the batch's output is in the content store: off the open index."""
        try:
            ddb().update_item(
                TableName=self.table,
                Key=_batch_key(batch_id),
                UpdateExpression="SET ingested = :t REMOVE open_shard",
                ConditionExpression="attribute_exists(job_id)",
                ExpressionAttributeValues={":t": True},
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise

    def group(self, job_id: str) -> tuple[str | None, list[RegisteredBatch]]:
        """The group's task token (None until WaitForBatches stored it) and its batches."""
        item = (
            ddb()
            .get_item(TableName=self.table, Key={"job_id": job_id}, ConsistentRead=True)
            .get("Item", {})
        )
        ids = sorted(str(b) for b in item.get("batch_ids", set()))
        batches: list[RegisteredBatch] = []
        for start in range(0, len(ids), 100):  # BatchGetItem takes at most 100 keys
            keys = [_batch_key(b) for b in ids[start : start + 100]]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                page = ddb().batch_get_item(RequestItems=request)
                batches.extend(_from_item(i) for i in page["Responses"].get(self.table, []))
                request = page.get("UnprocessedKeys") or {}
        token = item.get("task_token")
        return (str(token) if token else None), sorted(batches, key=lambda b: b.batch_id)

    def open_batches(self) -> list[RegisteredBatch]:
        """Every batch not yet ingested (one query of the sparse index, paginated)."""
        found: list[RegisteredBatch] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": OPEN_INDEX,
            "KeyConditionExpression": "open_shard = :o",
            "ExpressionAttributeValues": {":o": OPEN_SHARD},
        }
        while True:
            page = ddb().query(**kwargs)
            found.extend(_from_item(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def handled(self, webhook_id: str) -> bool:
        """Whether a delivery with this ``webhook-id`` was handled before."""
        item = ddb().get_item(
            TableName=self.table, Key={"job_id": f"webhook#{webhook_id}"}, ConsistentRead=True
        )
        return "Item" in item

    def first_delivery(self, webhook_id: str) -> bool:
        """Remember a handled webhook delivery; False when this ``webhook-id`` was already
        remembered (a repeat handled concurrently)."""
        try:
            ddb().put_item(
                TableName=self.table,
                Item={
                    "job_id": f"webhook#{webhook_id}",
                    "expires_at": int(time.time()) + WEBHOOK_MEMORY_SECONDS,
                },
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True


@functools.lru_cache(maxsize=8)
def batch_registry(table: str) -> BatchRegistry:
    """The :class:`BatchRegistry` of ``table`` (``JOBS_TABLE``), made once per table name."""
    return BatchRegistry(table)


def batch_registry_for(settings: HasJobsTable) -> BatchRegistry:
    """The :class:`BatchRegistry` of the settings' ``JOBS_TABLE``."""
    return batch_registry(settings.jobs_table)

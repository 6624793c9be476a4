"""The job's item in ``JOBS_TABLE`` (key ``job_id``), through :class:`JobStore`.

Job item attributes written here: ``batch#<input_file_id>`` = ``"creating"`` while a batch
is being created, then its batch id (conditional writes make CreateBatch idempotent);
``uploads#<round>``, the round's uploaded batch input files; ``status``, ``failed_state``,
``cause`` and the cost fields when the job ends. Read back as
:class:`~batch_embedder.records.JobItem`. (The cost ledger is ``aws/ledger.py``.)

A store is bound once to its table and made by a cached factory: ``jobs =
job_store_for(settings)``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Protocol

from botocore.exceptions import ClientError
from pydantic import TypeAdapter

from ..models import BatchFile, JobSummary
from ..records import BATCH_ATTR, UPLOADS_ATTR, JobItem
from .dynamodb import ddb

CREATING = "creating"
_BATCH_FILES = TypeAdapter(list[BatchFile])


class HasJobsTable(Protocol):
    """Anything naming the jobs table (the :class:`~batch_embedder.settings.Settings`)."""

    @property
    def jobs_table(self) -> str: ...


def dynamo_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with floats as ``Decimal`` (what DynamoDB stores numbers as)."""
    return {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in fields.items()}


class JobStore:
    """The job items of one jobs table; bind once with :func:`job_store`."""

    def __init__(self, table: str) -> None:
        self.table = table

    def get(self, job_id: str) -> JobItem:
        """The job's whole item (a consistent read); every field at its default if none."""
        item = (
            ddb()
            .get_item(TableName=self.table, Key={"job_id": job_id}, ConsistentRead=True)
            .get("Item", {})
        )
        return JobItem.model_validate({**item, "job_id": job_id})

    def _attribute(self, job_id: str, name: str) -> str | None:
        """One attribute of the job's item as a string (a consistent read), or None."""
        item = (
            ddb()
            .get_item(
                TableName=self.table,
                Key={"job_id": job_id},
                ConsistentRead=True,
                ProjectionExpression="#a",
                ExpressionAttributeNames={"#a": name},
            )
            .get("Item", {})
        )
        value = item.get(name)
        return str(value) if value is not None else None

    def recorded_batch(self, job_id: str, input_file_id: str) -> str | None:
        """The batch id recorded for this input file, ``"creating"`` if claimed, or None."""
        return self._attribute(job_id, BATCH_ATTR + input_file_id)

    def claim_batch(self, job_id: str, input_file_id: str) -> bool:
        """Claim the right to create the batch of ``input_file_id``.

        Returns:
            True if this call claimed it; False if a batch was already claimed or recorded.
        """
        try:
            ddb().update_item(
                TableName=self.table,
                Key={"job_id": job_id},
                UpdateExpression="SET #a = :creating",
                ConditionExpression="attribute_not_exists(#a)",
                ExpressionAttributeNames={"#a": BATCH_ATTR + input_file_id},
                ExpressionAttributeValues={":creating": CREATING},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def record_batch(self, job_id: str, input_file_id: str, batch_id: str) -> None:
        """Record the created batch id over the claim (only over the claim or the same id)."""
        ddb().update_item(
            TableName=self.table,
            Key={"job_id": job_id},
            UpdateExpression="SET #a = :id",
            ConditionExpression="#a = :creating OR #a = :id",
            ExpressionAttributeNames={"#a": BATCH_ATTR + input_file_id},
            ExpressionAttributeValues={":creating": CREATING, ":id": batch_id},
        )

    def recorded_uploads(self, job_id: str, round_: int) -> list[BatchFile] | None:
        """The batch input files uploaded for this round, or None: a retried
        BuildAndUploadJsonl reuses them instead of uploading (and paying storage) again."""
        recorded = self._attribute(job_id, f"{UPLOADS_ATTR}{round_}")
        return _BATCH_FILES.validate_json(recorded) if recorded is not None else None

    def record_uploads(self, job_id: str, round_: int, files: list[BatchFile]) -> None:
        """Remember the round's uploaded batch input files (stored as a JSON string)."""
        ddb().update_item(
            TableName=self.table,
            Key={"job_id": job_id},
            UpdateExpression="SET #u = :f",
            ExpressionAttributeNames={"#u": f"{UPLOADS_ATTR}{round_}"},
            ExpressionAttributeValues={":f": _BATCH_FILES.dump_json(files).decode()},
        )

    def uploaded_file_ids(self, job_id: str) -> list[str]:
        """Every batch input file the job uploaded, over all its rounds."""
        return self.get(job_id).uploaded_file_ids

    def mark_succeeded(self, summary: JobSummary) -> None:
        """Set ``status = SUCCEEDED`` and the summary's figures (not its lists, not ``aws``)."""
        fields = summary.model_dump(exclude={"rejected", "results", "aws"})
        self._finish(summary.job_id, {"status": "SUCCEEDED", **fields})

    def mark_failed(
        self, job_id: str, *, failed_state: str, cause: str, source_key: str | None = None
    ) -> None:
        """Set ``status = FAILED``, the Fail state and its cause (and the source key)."""
        fields = {"status": "FAILED", "failed_state": failed_state, "cause": cause}
        if source_key is not None:
            fields["source_key"] = source_key
        self._finish(job_id, fields)

    def _finish(self, job_id: str, fields: Mapping[str, Any]) -> None:
        values = dynamo_values({k: v for k, v in fields.items() if k != "job_id"})
        values["finished_at"] = int(time.time())
        names = {f"#f{i}": k for i, k in enumerate(values)}
        sets = ", ".join(f"#f{i} = :v{i}" for i in range(len(values)))
        ddb().update_item(
            TableName=self.table,
            Key={"job_id": job_id},
            UpdateExpression=f"SET {sets}",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":v{i}": v for i, v in enumerate(values.values())},
        )

    def scan_jobs(self) -> list[JobItem]:
        """Every job's own item that finished or reserved (not batches, webhooks): a
        paginated table scan, for the local stack's operator commands only."""
        items: list[JobItem] = []
        kwargs: dict[str, Any] = {"TableName": self.table}
        while True:
            page = ddb().scan(**kwargs)
            items.extend(
                JobItem.model_validate(i)
                for i in page.get("Items", [])
                if "#" not in str(i["job_id"]) and ("status" in i or "reservation_state" in i)
            )
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@functools.lru_cache(maxsize=8)
def job_store(table: str) -> JobStore:
    """The :class:`JobStore` of ``table``, made once per table name."""
    return JobStore(table)


def job_store_for(settings: HasJobsTable) -> JobStore:
    """The :class:`JobStore` of the settings' ``JOBS_TABLE``."""
    return job_store(settings.jobs_table)

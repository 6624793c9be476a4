"""The job's item in ``JOBS_TABLE`` (key ``job_id``) and the cost ledger in ``USAGE_TABLE``.

Job item attributes written here: ``batch#<input_file_id>`` = ``"creating"`` while a batch
is being created, then its batch id (conditional writes make CreateBatch idempotent);
``status``, ``failed_state``, ``cause`` and the cost fields when the job ends.

Ledger records: ``pk = "ledger#YYYY-MM-DD"``, ``sk = job_id`` in the usage table, one per
finished job, read by day.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .dynamodb import ddb

CREATING = "creating"


def _attr(input_file_id: str) -> str:
    return f"batch#{input_file_id}"


def _attribute(jobs_table: str, job_id: str, name: str) -> str | None:
    """One attribute of the job's item as a string (a consistent read), or None."""
    item = (
        ddb()
        .get_item(
            TableName=jobs_table,
            Key={"job_id": job_id},
            ConsistentRead=True,
            ProjectionExpression="#a",
            ExpressionAttributeNames={"#a": name},
        )
        .get("Item", {})
    )
    value = item.get(name)
    return str(value) if value is not None else None


def recorded_batch(jobs_table: str, job_id: str, input_file_id: str) -> str | None:
    """The batch id recorded for this input file, ``"creating"`` if claimed, or None."""
    return _attribute(jobs_table, job_id, _attr(input_file_id))


def claim_batch(jobs_table: str, job_id: str, input_file_id: str) -> bool:
    """Claim the right to create the batch of ``input_file_id``.

    Returns:
        True if this call claimed it; False if a batch was already claimed or recorded.
    """
    try:
        ddb().update_item(
            TableName=jobs_table,
            Key={"job_id": job_id},
            UpdateExpression="SET #a = :creating",
            ConditionExpression="attribute_not_exists(#a)",
            ExpressionAttributeNames={"#a": _attr(input_file_id)},
            ExpressionAttributeValues={":creating": CREATING},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True


def record_batch(jobs_table: str, job_id: str, input_file_id: str, batch_id: str) -> None:
    """Record the created batch id over the claim (only over the claim or the same id)."""
    ddb().update_item(
        TableName=jobs_table,
        Key={"job_id": job_id},
        UpdateExpression="SET #a = :id",
        ConditionExpression="#a = :creating OR #a = :id",
        ExpressionAttributeNames={"#a": _attr(input_file_id)},
        ExpressionAttributeValues={":creating": CREATING, ":id": batch_id},
    )


def mark_finished(jobs_table: str, job_id: str, fields: dict[str, Any]) -> None:
    """Set the job's final ``status`` and result fields (floats are stored as Decimal)."""
    values = {
        k: Decimal(str(v)) if isinstance(v, float) else v
        for k, v in fields.items()
        if k != "job_id"  # the key itself
    }
    values["finished_at"] = int(time.time())
    names = {f"#f{i}": k for i, k in enumerate(values)}
    sets = ", ".join(f"#f{i} = :v{i}" for i in range(len(values)))
    ddb().update_item(
        TableName=jobs_table,
        Key={"job_id": job_id},
        UpdateExpression=f"SET {sets}",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues={f":v{i}": v for i, v in enumerate(values.values())},
    )


def get_job(jobs_table: str, job_id: str) -> dict[str, Any]:
    """The job's whole item (empty dict if none)."""
    item: dict[str, Any] = (
        ddb()
        .get_item(TableName=jobs_table, Key={"job_id": job_id}, ConsistentRead=True)
        .get("Item", {})
    )
    return item


def put_ledger_record(usage_table: str, day: str, job_id: str, record: dict[str, Any]) -> None:
    """Write (or overwrite, on retry) the job's ledger record for ``day``."""
    item = {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in record.items()}
    item.update({"pk": f"ledger#{day}", "sk": job_id})
    ddb().put_item(TableName=usage_table, Item=item)


def ledger_records(usage_table: str, day: str) -> list[dict[str, Any]]:
    """Every ledger record of ``day`` (paginated query)."""
    records: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": usage_table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": f"ledger#{day}"},
    }
    while True:
        page = ddb().query(**kwargs)
        records.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return records
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def update_ledger_money(
    usage_table: str,
    day: str,
    job_id: str,
    *,
    money: dict[str, Any],
    defaults: dict[str, Any],
) -> None:
    """Set the money fields of the job's ledger record (``tokens``, ``cost_usd``, ...) and
    recompute ``total_cost_usd`` = ``cost_usd`` + ``aws_cost_usd``; ``defaults`` fill the
    other fields of a record that does not exist yet (never overwrite them)."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {":zero": Decimal(0)}
    sets: list[str] = []
    for i, (name, value) in enumerate(money.items()):
        names[f"#m{i}"] = name
        values[f":m{i}"] = value
        sets.append(f"#m{i} = :m{i}")
    for i, (name, value) in enumerate(defaults.items()):
        names[f"#d{i}"] = name
        values[f":d{i}"] = value
        sets.append(f"#d{i} = if_not_exists(#d{i}, :d{i})")
    names["#total"] = "total_cost_usd"
    names["#aws"] = "aws_cost_usd"
    sets.append("#total = :cost + if_not_exists(#aws, :zero)")
    values[":cost"] = money.get("cost_usd", Decimal(0))
    ddb().update_item(
        TableName=usage_table,
        Key={"pk": f"ledger#{day}", "sk": job_id},
        UpdateExpression="SET " + ", ".join(sets),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def recorded_uploads(jobs_table: str, job_id: str, round_: int) -> str | None:
    """The batch input files uploaded for this round (JSON), or None: a retried
    BuildAndUploadJsonl reuses them instead of uploading (and paying storage) again."""
    return _attribute(jobs_table, job_id, f"uploads#{round_}")


def record_uploads(jobs_table: str, job_id: str, round_: int, files_json: str) -> None:
    """Remember the round's uploaded batch input files (JSON)."""
    ddb().update_item(
        TableName=jobs_table,
        Key={"job_id": job_id},
        UpdateExpression="SET #u = :f",
        ExpressionAttributeNames={"#u": f"uploads#{round_}"},
        ExpressionAttributeValues={":f": files_json},
    )


def uploaded_file_ids(jobs_table: str, job_id: str) -> list[str]:
    """Every batch input file the job uploaded, over all its rounds."""
    item = get_job(jobs_table, job_id)
    ids: list[str] = []
    for name, value in item.items():
        if str(name).startswith("uploads#"):
            ids.extend(str(f["file_id"]) for f in json.loads(str(value)))
    return ids

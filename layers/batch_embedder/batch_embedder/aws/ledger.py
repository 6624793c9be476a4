"""The cost ledger in ``USAGE_TABLE``, through :class:`LedgerStore`.

One :class:`~batch_embedder.records.LedgerRecord` per finished job: ``pk =
"ledger#YYYY-MM-DD"``, ``sk = job_id``, read by day. Written by RecordCost and
RecordFailure, its money brought up to date by whoever settles the job again
(``steps/settle.py``), read by ``batch-embedder costs``.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from ..records import LedgerRecord
from .dynamodb import ddb
from .jobs import dynamo_values

#: The fields :meth:`LedgerStore.update_money` sets.
MONEY_FIELDS = ("tokens", "repaid_tokens", "cost_usd", "standard_cost_usd", "saved_usd")
#: The fields it fills only in a record that does not exist yet.
DEFAULT_FIELDS = ("job_id", "source", "day", "model", "status", "cause")


class HasUsageTable(Protocol):
    """Anything naming the usage table (the :class:`~batch_embedder.settings.Settings`)."""

    @property
    def usage_table(self) -> str: ...


def ledger_key(day: str, job_id: str) -> dict[str, str]:
    """The key of ``job_id``'s ledger record for ``day`` (YYYY-MM-DD)."""
    return {"pk": f"ledger#{day}", "sk": job_id}


class LedgerStore:
    """The ledger records of one usage table; bind once with :func:`ledger_store`."""

    def __init__(self, table: str) -> None:
        self.table = table

    def put(self, record: LedgerRecord) -> None:
        """Write (or overwrite, on retry) the job's record for its ``day``."""
        item = dynamo_values(record.model_dump())
        item.update(ledger_key(record.day, record.job_id))
        ddb().put_item(TableName=self.table, Item=item)

    def get(self, day: str, job_id: str) -> LedgerRecord | None:
        """The job's record for ``day`` (a consistent read), or None.

        Raises:
            ValueError: the stored item is not a valid ledger record.
        """
        item = (
            ddb()
            .get_item(TableName=self.table, Key=ledger_key(day, job_id), ConsistentRead=True)
            .get("Item")
        )
        return LedgerRecord.from_item(item) if item is not None else None

    def records(self, day: str) -> list[LedgerRecord]:
        """Every record of ``day``, in job-id order (a paginated query).

        Raises:
            ValueError: a stored item is not a valid ledger record (named by ``pk/sk``).
        """
        records: list[LedgerRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": f"ledger#{day}"},
        }
        while True:
            page = ddb().query(**kwargs)
            records.extend(LedgerRecord.from_item(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return records
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def update_money(self, record: LedgerRecord) -> None:
        """Set the money fields (:data:`MONEY_FIELDS`) of ``record``'s stored record and
        recompute ``total_cost_usd`` = ``cost_usd`` + the stored ``aws_cost_usd``; the
        :data:`DEFAULT_FIELDS` of ``record`` fill a record that does not exist yet (they
        never overwrite). Nothing else of a stored record changes."""
        money = dynamo_values(record.model_dump(include=set(MONEY_FIELDS)))
        defaults = dynamo_values(record.model_dump(include=set(DEFAULT_FIELDS)))
        names: dict[str, str] = {}
        values: dict[str, Any] = {":zero": 0}
        sets: list[str] = []
        for i, name in enumerate(MONEY_FIELDS):
            names[f"#m{i}"] = name
            values[f":m{i}"] = money[name]
            sets.append(f"#m{i} = :m{i}")
        for i, name in enumerate(DEFAULT_FIELDS):
            names[f"#d{i}"] = name
            values[f":d{i}"] = defaults[name]
            sets.append(f"#d{i} = if_not_exists(#d{i}, :d{i})")
        names["#total"] = "total_cost_usd"
        names["#aws"] = "aws_cost_usd"
        sets.append("#total = :cost + if_not_exists(#aws, :zero)")
        values[":cost"] = money["cost_usd"]
        ddb().update_item(
            TableName=self.table,
            Key=ledger_key(record.day, record.job_id),
            UpdateExpression="SET " + ", ".join(sets),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )


@functools.lru_cache(maxsize=8)
def ledger_store(table: str) -> LedgerStore:
    """The :class:`LedgerStore` of ``table``, made once per table name."""
    return LedgerStore(table)


def ledger_store_for(settings: HasUsageTable) -> LedgerStore:
    """The :class:`LedgerStore` of the settings' ``USAGE_TABLE``."""
    return ledger_store(settings.usage_table)

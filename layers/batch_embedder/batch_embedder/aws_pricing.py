"""AWS list prices (us-east-1, USD): the one table every AWS cost figure comes from.

Each field of :class:`AwsPrices` is one public list price, named with its unit, and can be
overridden by the environment variable ``AWS_PRICE_<FIELD NAME>`` (case-insensitive), e.g.
``AWS_PRICE_S3_TIER1_PER_THOUSAND_REQUESTS=0.0054`` for another region.

Free tiers, Savings Plans and volume discounts are ignored: figures are list prices.

Left out on purpose (not metered): CloudWatch Logs/metrics and X-Ray
(https://aws.amazon.com/cloudwatch/pricing/, https://aws.amazon.com/xray/pricing/), S3 and
DynamoDB storage, Secrets Manager's per-secret monthly charge, data transfer. The ledger
counts requests and compute only.

The second half holds DynamoDB's request-unit rules, used when a response does not report
``ConsumedCapacity``.
"""

from __future__ import annotations

import base64
import functools
import math
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SFN_URL = "https://aws.amazon.com/step-functions/pricing/"
LAMBDA_URL = "https://aws.amazon.com/lambda/pricing/"
SQS_URL = "https://aws.amazon.com/sqs/pricing/"
PIPES_URL = "https://aws.amazon.com/eventbridge/pricing/"
DYNAMODB_URL = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
S3_URL = "https://aws.amazon.com/s3/pricing/"
SECRETS_URL = "https://aws.amazon.com/secrets-manager/pricing/"


def _price(default: float, unit: str, url: str) -> float:
    """A non-negative price field whose description gives its unit and public source."""
    return Field(default=default, ge=0, description=f"USD {unit}. Source: {url}")


class AwsPrices(BaseSettings):
    """AWS list prices in USD, us-east-1; each overridable by ``AWS_PRICE_<FIELD>``.

    Raises:
        pydantic.ValidationError: an override is not a number or is negative.
    """

    model_config = SettingsConfigDict(
        env_prefix="AWS_PRICE_", case_sensitive=False, extra="ignore", frozen=True
    )

    #: Step Functions Standard: per 1,000,000 state transitions (retries included).
    sfn_standard_per_million_transitions: float = _price(
        25.0, "per 1,000,000 Standard state transitions", SFN_URL
    )
    #: Step Functions Express: per 1,000,000 requests (executions started).
    sfn_express_per_million_requests: float = _price(
        1.00, "per 1,000,000 Express requests", SFN_URL
    )
    #: Step Functions Express: per GB-second of duration (first price tier).
    sfn_express_per_gb_second: float = _price(0.00001667, "per Express GB-second", SFN_URL)
    #: Lambda arm64: per GB-second of duration (first price tier, 1 ms billing increments).
    lambda_arm64_per_gb_second: float = _price(
        0.0000133334, "per Lambda arm64 GB-second", LAMBDA_URL
    )
    #: Lambda: per 1,000,000 requests (invocations).
    lambda_per_million_requests: float = _price(0.20, "per 1,000,000 Lambda requests", LAMBDA_URL)
    #: SQS standard queue: per 1,000,000 requests (each 64 KB chunk of payload is a request).
    sqs_standard_per_million_requests: float = _price(
        0.40, "per 1,000,000 SQS standard requests", SQS_URL
    )
    #: EventBridge Pipes: per 1,000,000 requests (after filtering, 64 KB chunks).
    pipes_per_million_requests: float = _price(
        0.40, "per 1,000,000 EventBridge Pipes requests", PIPES_URL
    )
    #: DynamoDB on-demand: per 1,000,000 write request units.
    ddb_per_million_write_units: float = _price(
        0.625, "per 1,000,000 DynamoDB on-demand write request units", DYNAMODB_URL
    )
    #: DynamoDB on-demand: per 1,000,000 read request units.
    ddb_per_million_read_units: float = _price(
        0.125, "per 1,000,000 DynamoDB on-demand read request units", DYNAMODB_URL
    )
    #: S3 Standard: per 1,000 PUT, COPY, POST or LIST requests.
    s3_tier1_per_thousand_requests: float = _price(
        0.005, "per 1,000 S3 Standard PUT/COPY/POST/LIST requests", S3_URL
    )
    #: S3 Standard: per 1,000 GET, HEAD and all other requests (DELETE is free).
    s3_tier2_per_thousand_requests: float = _price(
        0.0004, "per 1,000 S3 Standard GET/HEAD/other requests (DELETE is free)", S3_URL
    )
    #: Secrets Manager: per 10,000 API calls.
    secrets_per_ten_thousand_requests: float = _price(
        0.05, "per 10,000 Secrets Manager API calls", SECRETS_URL
    )


@functools.cache
def aws_prices() -> AwsPrices:
    """The process-wide :class:`AwsPrices`, read from the environment once.

    Call ``aws_prices.cache_clear()`` after changing ``AWS_PRICE_*`` variables.

    Raises:
        pydantic.ValidationError: an override is not a non-negative number.
    """
    return AwsPrices()


def lambda_gb_seconds(memory_mb: int, seconds: float) -> float:
    """GB-seconds of ``seconds`` at ``memory_mb``, the duration rounded up to 1 ms (the
    billing increment of https://aws.amazon.com/lambda/pricing/)."""
    billed = math.ceil(round(seconds * 1000, 6)) / 1000
    return memory_mb / 1024 * billed


# --- DynamoDB request units ---------------------------------------------------------------

#: DynamoDB data-plane operations billed in read / write request units.
DDB_READ_OPS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
DDB_WRITE_OPS = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)


_VALUES = "ExpressionAttributeValues"


def _number_size(text: str) -> int:
    digits = text.lstrip("+-").split("e")[0].split("E")[0].replace(".", "").strip("0")
    return math.ceil(len(digits) / 2) + 1


def _value_size(value: dict[str, Any]) -> int:
    """Bytes of one wire-format AttributeValue (``{"S": "x"}``, ``{"M": {...}}``, ...)."""
    kind, v = next(iter(value.items()))
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(v)
    if kind == "B":
        return len(base64.b64decode(v))
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: e}) for e in v)
    if kind == "L":
        return 3 + sum(1 + _value_size(e) for e in v)
    if kind == "M":
        return 3 + item_size(v) + len(v)
    return 1  # BOOL, NULL


def item_size(item: dict[str, Any]) -> int:
    """Bytes of a wire-format DynamoDB item (``{"name": {"S": "x"}}``): UTF-8 attribute names
    plus values; numbers 1 byte per 2 significant digits + 1, lists and maps 3 bytes + 1 per
    element, BOOL/NULL 1 byte (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html).

    Raises:
        ValueError: a B/BS value is not base64 (``binascii.Error``).
    """
    return sum(len(name.encode()) + _value_size(v) for name, v in item.items())


def _units(size: int, block: int) -> int:
    return max(1, math.ceil(size / block))


def estimate_ddb_units(op: str, req: dict[str, Any], resp: dict[str, Any]) -> tuple[float, float]:
    """(read, write) request units of one DynamoDB call ``op`` by the documented size rule,
    from its wire-format (typed JSON) request and response bodies.

    Writes: 1 WRU per started 1 KB of item, per item (UpdateItem/DeleteItem: the returned
    ``Attributes``, else the key and ``ExpressionAttributeValues``, a lower bound;
    BatchWriteItem: minus ``UnprocessedItems``; deletes 1).
    Reads: 1 RRU per started 4 KB strongly consistent, 0.5 eventually (Query/Scan: the summed
    size of the items returned, which ignores filtered-out items). Transactions: 2x.
    Unknown operations: (0, 0).
    Source: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html

    Raises:
        ValueError, KeyError, TypeError, AttributeError: a body is not DynamoDB's wire format.
    """
    kb, four_kb = 1024, 4096

    def read_factor(r: dict[str, Any]) -> float:
        return 1.0 if r.get("ConsistentRead") else 0.5

    if op == "PutItem":
        return 0.0, _units(item_size(req.get("Item", {})), kb)
    if op in ("UpdateItem", "DeleteItem"):
        seen = resp.get("Attributes") or {**req.get("Key", {}), **req.get(_VALUES, {})}
        return 0.0, _units(item_size(seen), kb)
    if op == "BatchWriteItem":
        done = 0
        for sign, requests in (
            (1, req.get("RequestItems", {})),
            (-1, resp.get("UnprocessedItems", {})),
        ):
            for writes in requests.values():
                for w in writes:
                    put = w.get("PutRequest")
                    done += sign * (_units(item_size(put["Item"]), kb) if put else 1)
        return 0.0, float(max(done, 0))
    if op == "TransactWriteItems":
        total = 0
        for t in req.get("TransactItems", []):
            action = next(iter(t.values()))
            total += _units(item_size(action.get("Item") or action.get("Key", {})), kb)
        return 0.0, 2.0 * total
    if op == "GetItem":
        return _units(item_size(resp.get("Item", {})), four_kb) * read_factor(req), 0.0
    if op in ("Query", "Scan"):
        size = sum(item_size(i) for i in resp.get("Items", []))
        return _units(size, four_kb) * read_factor(req), 0.0
    if op == "BatchGetItem":
        units = 0.0
        for table, items in resp.get("Responses", {}).items():
            factor = read_factor(req.get("RequestItems", {}).get(table, {}))
            units += sum(_units(item_size(i), four_kb) * factor for i in items)
        return units, 0.0
    if op == "TransactGetItems":
        units = sum(
            _units(item_size(r.get("Item", {})), four_kb) for r in resp.get("Responses", [])
        )
        return 2.0 * units, 0.0
    return 0.0, 0.0


def reported_ddb_units(op: str, parsed: dict[str, Any]) -> tuple[float, float] | None:
    """(read, write) request units from a parsed response's ``ConsumedCapacity`` (a dict or a
    list of dicts): ``ReadCapacityUnits``/``WriteCapacityUnits`` when given, else
    ``CapacityUnits`` counted as reads for read operations and as writes otherwise.
    None when the response has none (absent or an empty list)."""
    raw = parsed.get("ConsumedCapacity")
    entries = [raw] if isinstance(raw, dict) else (raw or [])
    if not entries:
        return None
    read = sum(float(e.get("ReadCapacityUnits", 0.0)) for e in entries)
    write = sum(float(e.get("WriteCapacityUnits", 0.0)) for e in entries)
    if read or write:
        return read, write
    total = sum(float(e.get("CapacityUnits", 0.0)) for e in entries)
    return (total, 0.0) if op in DDB_READ_OPS else (0.0, total)

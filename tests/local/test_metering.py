"""AWS request metering (moto): exact request counts, DynamoDB units, prices, threads."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from moto import mock_aws
from pydantic import ValidationError

from batch_embedder import aws_pricing
from batch_embedder.aws import clients, dynamodb, metering
from batch_embedder.aws.metering import AwsUsage, meter, propagate, transitions_from_history
from batch_embedder.aws_pricing import AwsPrices
from batch_embedder_local.moto_tables import forget_clients

BUCKET = "metering-bucket"
TABLE = "metering-table"


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto with fake credentials; the project's cached clients are rebuilt inside it."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    forget_clients()
    with mock_aws():
        # Set-up outside any meter: none of it may be counted.
        clients.client("s3").create_bucket(Bucket=BUCKET)
        dynamodb.ddb().create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield
    forget_clients()


@pytest.fixture()
def fresh_prices() -> Iterator[None]:
    aws_pricing.aws_prices.cache_clear()
    yield
    aws_pricing.aws_prices.cache_clear()


def workload() -> None:
    """2 PutObject + 3 GetObject + 1 ListObjectsV2 + PutItem + GetItem + 2-item transaction."""
    s3 = clients.client("s3")
    for key in ("a.txt", "b.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"hello")
    for key in ("a.txt", "b.txt", "a.txt"):
        s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.list_objects_v2(Bucket=BUCKET)
    ddb = dynamodb.ddb()
    ddb.put_item(TableName=TABLE, Item={"pk": "x", "n": 1})
    ddb.get_item(TableName=TABLE, Key={"pk": "x"})
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": {"pk": "t1"}}},
            {"Put": {"TableName": TABLE, "Item": {"pk": "t2"}}},
        ]
    )


EXPECTED_REQUESTS = {
    "s3.PutObject": 2,
    "s3.GetObject": 3,
    "s3.ListObjectsV2": 1,
    "dynamodb.PutItem": 1,
    "dynamodb.GetItem": 1,
    "dynamodb.TransactWriteItems": 1,
}


def test_exact_counts_and_cost(aws: None) -> None:
    with meter() as m:
        workload()
    assert m.requests == EXPECTED_REQUESTS
    usage = m.usage
    # PutItem: moto reports 1.0 WRU; GetItem: 0.5 RRU; the transaction (moto reports [])
    # is estimated: 2 items < 1 KB, 2x for a transaction = 4 WRU.
    assert usage == AwsUsage(
        s3_tier1_requests=3, s3_tier2_requests=3, ddb_write_units=5.0, ddb_read_units=0.5
    )
    p = AwsPrices()
    s3_usd = (
        3 * p.s3_tier1_per_thousand_requests / 1000 + 3 * p.s3_tier2_per_thousand_requests / 1000
    )
    ddb_usd = 5 * p.ddb_per_million_write_units / 1e6 + 0.5 * p.ddb_per_million_read_units / 1e6
    assert s3_usd + ddb_usd == pytest.approx(0.0000193875, abs=1e-12)
    assert usage.breakdown_usd(p)["s3"] == pytest.approx(s3_usd, abs=1e-9)
    assert usage.breakdown_usd(p)["dynamodb"] == pytest.approx(ddb_usd, abs=1e-9)
    assert usage.cost_usd(p) == pytest.approx(0.0000193875, abs=1e-9)
    assert usage.cost_usd(p) == round(usage.cost_usd(p), 9)


def test_requests_outside_a_meter_are_not_counted(aws: None) -> None:
    ddb = dynamodb.ddb()
    outside = ddb.put_item(TableName=TABLE, Item={"pk": "o"})
    assert "ConsumedCapacity" not in outside  # only asked for while metering
    with meter() as m:
        inside = ddb.put_item(TableName=TABLE, Item={"pk": "i"})
    workload()
    assert "ConsumedCapacity" in inside
    assert m.requests == {"dynamodb.PutItem": 1}
    assert m.usage == AwsUsage(ddb_write_units=1.0)


def test_nested_meters_and_unpriced_requests(aws: None) -> None:
    s3 = clients.client("s3")
    with meter() as outer:
        with meter() as inner:
            s3.put_object(Bucket=BUCKET, Key="n.txt", Body=b"x")
            dynamodb.ddb().describe_table(TableName=TABLE)
        s3.delete_object(Bucket=BUCKET, Key="n.txt")  # free, counted as a request
    assert inner.usage == AwsUsage(
        s3_tier1_requests=1, other_requests={"dynamodb.DescribeTable": 1}
    )
    assert outer.usage == inner.usage
    assert outer.requests == {
        "s3.PutObject": 1,
        "dynamodb.DescribeTable": 1,
        "s3.DeleteObject": 1,
    }


def test_threads_count_only_through_propagate(aws: None) -> None:
    s3 = clients.client("s3")
    s3.put_object(Bucket=BUCKET, Key="t.txt", Body=b"x")

    def read(_: int) -> bytes:
        body: bytes = s3.get_object(Bucket=BUCKET, Key="t.txt")["Body"].read()
        return body

    with meter() as m, ThreadPoolExecutor(4) as pool:
        assert list(pool.map(propagate(read), range(8))) == [b"x"] * 8
        list(pool.map(read, range(5)))  # threads do not inherit the meter
    assert m.requests == {"s3.GetObject": 8}
    assert m.usage.s3_tier2_requests == 8


def test_every_attempt_is_counted(aws: None) -> None:
    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>"

    s3: Any = metering.instrument(boto3.client("s3"))
    s3.put_object(Bucket=BUCKET, Key="r.txt", Body=b"x")
    attempts: list[int] = []

    def fail_first(request: Any, **_: Any) -> AWSResponse | None:
        attempts.append(1)
        return AWSResponse(request.url, 503, HTTPHeaders(), Raw()) if len(attempts) == 1 else None

    def retry_now(response: Any, **_: Any) -> int | None:
        failed = response is not None and response[0].status_code == 503
        return 0 if failed else None  # retry the 503 at once instead of sleeping

    s3.meta.events.register_first("before-send.s3.GetObject", fail_first)
    s3.meta.events.register_first("needs-retry.s3.GetObject", retry_now)
    with meter() as m:
        assert s3.get_object(Bucket=BUCKET, Key="r.txt")["Body"].read() == b"x"
    assert len(attempts) == 2
    assert m.requests == {"s3.GetObject": 2}
    assert m.usage.s3_tier2_requests == 2
    assert metering.instrument(s3) is s3  # idempotent: still two, not four
    with meter() as again:
        s3.get_object(Bucket=BUCKET, Key="r.txt")
    assert again.requests == {"s3.GetObject": 1}


def test_secrets_manager_calls_through_the_provider(aws: None) -> None:
    sm = clients.client("secretsmanager")
    sm.create_secret(Name="s", SecretString="value")
    with meter() as m:
        assert clients.secrets_provider().get("s") == "value"
        assert clients.secrets_provider().get("s") == "value"  # Powertools cache
    assert m.requests == {"secretsmanager.GetSecretValue": 1}
    assert m.usage.secrets_requests == 1
    assert m.usage.cost_usd() == pytest.approx(0.05 / 10_000, abs=1e-12)


def test_consumed_capacity_estimate_rule() -> None:
    big = {"pk": {"S": "k"}, "body": {"S": "x" * 1500}}
    assert aws_pricing.item_size(big) == 2 + 1 + 4 + 1500
    assert aws_pricing.item_size({"n": {"N": "-0012.3400"}}) == 1 + 2 + 1
    assert aws_pricing.item_size({"l": {"L": [{"BOOL": True}, {"NULL": True}]}}) == 1 + 3 + 4
    assert aws_pricing.estimate_ddb_units("PutItem", {"Item": big}, {}) == (0.0, 2.0)
    strong = {"ConsistentRead": True}
    item = {"pk": {"S": "y" * 5000}}
    assert aws_pricing.estimate_ddb_units("GetItem", strong, {"Item": item}) == (2.0, 0.0)
    assert aws_pricing.estimate_ddb_units("GetItem", {}, {}) == (0.5, 0.0)
    assert aws_pricing.estimate_ddb_units("Query", {}, {"Items": [item, item]}) == (1.5, 0.0)
    writes = {"RequestItems": {"t": [{"PutRequest": {"Item": big}}, {"DeleteRequest": {}}]}}
    assert aws_pricing.estimate_ddb_units("BatchWriteItem", writes, {}) == (0.0, 3.0)
    parsed = {"ConsumedCapacity": [{"CapacityUnits": 2.0}, {"CapacityUnits": 1.5}]}
    assert aws_pricing.reported_ddb_units("TransactWriteItems", parsed) == (0.0, 3.5)
    assert aws_pricing.reported_ddb_units("Query", {"ConsumedCapacity": []}) is None


def test_transitions_from_history() -> None:
    history: list[dict[str, Any]] = [
        {"id": 1, "type": "ExecutionStarted"},
        {"id": 2, "previousEventId": 1, "type": "TaskStateEntered"},
        {"id": 3, "previousEventId": 2, "type": "LambdaFunctionScheduled"},
        {"id": 4, "previousEventId": 3, "type": "LambdaFunctionStarted"},
        {"id": 5, "previousEventId": 4, "type": "LambdaFunctionFailed"},
        {"id": 6, "previousEventId": 5, "type": "LambdaFunctionScheduled"},  # retry 1
        {"id": 7, "previousEventId": 6, "type": "LambdaFunctionStarted"},
        {"id": 8, "previousEventId": 7, "type": "LambdaFunctionTimedOut"},
        {"id": 9, "previousEventId": 8, "type": "LambdaFunctionScheduled"},  # retry 2
        {"id": 10, "previousEventId": 9, "type": "LambdaFunctionSucceeded"},
        {"id": 11, "previousEventId": 10, "type": "TaskStateExited"},
        {"id": 12, "previousEventId": 11, "type": "TaskStateEntered"},
        {"id": 13, "previousEventId": 12, "type": "TaskScheduled"},  # first attempt only
        {"id": 14, "previousEventId": 13, "type": "TaskSucceeded"},
        {"id": 15, "previousEventId": 14, "type": "TaskStateExited"},
        {"id": 16, "previousEventId": 15, "type": "ChoiceStateEntered"},
        {"id": 17, "previousEventId": 16, "type": "ChoiceStateExited"},
        {"id": 18, "previousEventId": 17, "type": "SucceedStateEntered"},
        {"id": 19, "previousEventId": 18, "type": "SucceedStateExited"},
        {"id": 20, "previousEventId": 19, "type": "ExecutionSucceeded"},
    ]
    assert transitions_from_history(history) == 4 + 2
    no_ids = [{"type": e["type"]} for e in history]
    assert transitions_from_history(no_ids) == 6
    assert transitions_from_history([]) == 0
    with pytest.raises(ValueError, match="no 'type'"):
        transitions_from_history([{"id": 1}])


def test_price_overrides_from_env(monkeypatch: pytest.MonkeyPatch, fresh_prices: None) -> None:
    usage = AwsUsage(s3_tier1_requests=1000, sfn_transitions=1_000_000)
    assert usage.breakdown_usd()["s3"] == 0.005
    assert usage.cost_usd() == 25.005
    monkeypatch.setenv("AWS_PRICE_S3_TIER1_PER_THOUSAND_REQUESTS", "0.0054")
    monkeypatch.setenv("aws_price_sfn_standard_per_million_transitions", "30")
    assert AwsPrices().s3_tier1_per_thousand_requests == 0.0054
    assert usage.cost_usd() == 25.005  # cached until cache_clear
    aws_pricing.aws_prices.cache_clear()
    assert usage.cost_usd() == 30.0054
    monkeypatch.setenv("AWS_PRICE_SQS_STANDARD_PER_MILLION_REQUESTS", "-1")
    with pytest.raises(ValidationError):
        AwsPrices()


def test_usage_arithmetic_and_lambda() -> None:
    a = AwsUsage(sqs_requests=2, other_requests={"sfn.StartExecution": 1})
    b = AwsUsage(sqs_requests=3, ddb_read_units=0.5, other_requests={"sfn.StartExecution": 2})
    total = sum([a, b])
    assert (
        total
        == a + b
        == AwsUsage(sqs_requests=5, ddb_read_units=0.5, other_requests={"sfn.StartExecution": 3})
    )
    with pytest.raises(ValidationError):
        AwsUsage(s3_tier1_requests=-1)
    with meter() as m:
        metering.record_lambda(512, 1.0001)  # billed 1.001 s
    assert m.usage.lambda_requests == 1
    assert m.usage.lambda_gb_seconds == pytest.approx(0.5 * 1.001)
    metering.record_lambda(512, 1.0)  # outside any meter: ignored
    with pytest.raises(ValueError):
        metering.record_lambda(0, 1.0)
    with meter() as outer:
        with metering.invocation(memory_mb=1024) as inv:
            assert metering.snapshot().lambda_requests == 1
        assert inv.usage == inv.usage  # frozen once the block ended
    assert outer.usage.lambda_requests == 1
    assert outer.usage.lambda_gb_seconds == inv.usage.lambda_gb_seconds > 0
    assert metering.snapshot() == AwsUsage()

"""moto with the project's DynamoDB tables, for tests and benchmarks that need only those.

The tables come from template.yaml's own definitions; moto's DynamoDB requests are made
atomic with the same lock the local stack uses (moto is not thread-safe without it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .lambda_adapter import install_dynamodb_request_lock
from .template import load_template

FAKE_AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def create_table(logical_id: str, name: str) -> None:
    """Create the template's table ``logical_id`` as ``name`` (key schema, indexes)."""
    from batch_embedder.aws import dynamodb

    props: dict[str, Any] = load_template()["Resources"][logical_id]["Properties"]
    kwargs: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props["BillingMode"],
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    dynamodb.ddb().create_table(**kwargs)


def forget_clients() -> None:
    """Drop the library's cached boto3 clients (``functools.cache``), so that the next ones
    are made inside the mock that starts now."""
    from batch_embedder.aws import clients, dynamodb

    clients.client.cache_clear()
    clients.secrets_provider.cache_clear()
    dynamodb.ddb.cache_clear()


@contextmanager
def moto_table(logical_id: str = "UsageTable", name: str = "usage") -> Iterator[str]:
    """Start moto (fake credentials), create the table, yield its name; undo it all after."""
    from moto import mock_aws

    saved = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    try:
        with mock_aws():
            forget_clients()
            remove = install_dynamodb_request_lock()
            try:
                create_table(logical_id, name)
                yield name
            finally:
                remove()
                forget_clients()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

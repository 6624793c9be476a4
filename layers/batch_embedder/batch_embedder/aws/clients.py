"""boto3 clients, created once per process (Lambda reuses them across invocations).

Every client is instrumented for the AWS cost ledger (see :mod:`.metering`).
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

from .metering import instrument

#: Standard retry mode with more attempts: throttling on DynamoDB/S3 is retried by botocore.
_CONFIG = Config(retries={"max_attempts": 8, "mode": "standard"})


@functools.cache
def client(service: str) -> Any:
    """A boto3 client for ``service`` with the project's retry configuration, metered."""
    return instrument(boto3.client(service, config=_CONFIG))  # type: ignore[call-overload]


@functools.cache
def secrets_provider() -> Any:
    """A Powertools ``SecretsProvider`` on the metered ``secretsmanager`` client (its
    ``get(name, max_age=...)`` caches like ``parameters.get_secret``)."""
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    return SecretsProvider(boto3_client=client("secretsmanager"))

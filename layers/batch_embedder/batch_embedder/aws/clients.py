"""boto3 clients, created once per process (Lambda reuses them across invocations)."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

#: Standard retry mode with more attempts: throttling on DynamoDB/S3 is retried by botocore.
_CONFIG = Config(retries={"max_attempts": 8, "mode": "standard"})


@functools.cache
def client(service: str) -> Any:
    """A boto3 client for ``service`` with the project's retry configuration."""
    return boto3.client(service, config=_CONFIG)  # type: ignore[call-overload]


def reset() -> None:
    """Forget cached clients (the local stack calls this when it starts a new mock)."""
    client.cache_clear()

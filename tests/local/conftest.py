"""Fixtures of the local tier: moto in-process, no stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's in-process AWS, with test credentials and none of the stack's names set."""
    from moto import mock_aws

    from batch_embedder.aws import clients, dynamodb

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "USAGE_TABLE", "JOBS_TABLE", "PRICE_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        dynamodb.reset()
        clients.reset()
        yield
    dynamodb.reset()
    clients.reset()

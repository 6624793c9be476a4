"""Fixtures of the local tier: moto in-process, no stack."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from batch_embedder_local.openai_server import EmulatorConfig, OpenAIEmulator
from tests.emulator import API_KEY


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's in-process AWS, with test credentials and none of the stack's names set."""
    from moto import mock_aws

    from batch_embedder_local.moto_tables import forget_clients

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "USAGE_TABLE", "JOBS_TABLE", "PRICE_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        forget_clients()
        yield
    forget_clients()


@pytest.fixture(scope="module")
def emu() -> Iterator[OpenAIEmulator]:
    """A fast emulator (short batch phases) for the module."""
    config = EmulatorConfig(
        api_key=API_KEY,
        batch_validating_seconds=0.05,
        batch_in_progress_seconds=0.1,
        batch_finalizing_seconds=0.05,
        batch_cancel_seconds=0.05,
    )
    with OpenAIEmulator(config) as emulator:
        yield emulator


@pytest.fixture()
def reset_emulator(emu: OpenAIEmulator) -> Iterator[None]:
    """Put the emulator back after the test (use with ``pytest.mark.usefixtures``)."""
    yield
    emu.reset()


@pytest.fixture
def client(emu: OpenAIEmulator) -> openai.OpenAI:
    """The SDK pointed at the emulator, no retries."""
    return openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=0)


@pytest.fixture
def admin(emu: OpenAIEmulator) -> openai.OpenAI:
    """The SDK pointed at the emulator's root, for its admin routes."""
    return openai.OpenAI(api_key="unused", base_url=emu.url, max_retries=0)

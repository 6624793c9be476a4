"""The price table and the settings model."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from batch_embedder.openai import pricing
from batch_embedder.settings import Settings, request_dimensions


def test_batch_is_half_the_standard_price() -> None:
    for model, price in pricing.PRICES.items():
        assert price.batch * 2 == price.standard, model
    cost = pricing.breakdown("text-embedding-3-small", 1_000_000)
    assert (cost.batch_usd, cost.standard_usd, cost.saved_usd) == (
        Decimal("0.01"), Decimal("0.02"), Decimal("0.01"),
    )  # fmt: skip


def test_price_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICE_OVERRIDES", '{"my-model": {"standard": 1, "batch": 0.4}}')
    assert pricing.breakdown("my-model", 2_000_000).batch_usd == Decimal("0.8")
    monkeypatch.delenv("PRICE_OVERRIDES")
    with pytest.raises(KeyError, match="PRICE_OVERRIDES"):
        pricing.price_for("my-model")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNK_TOKENS", "256")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "512")
    s = Settings()
    assert s.chunk_tokens == 256 and s.dimensions == 512
    assert request_dimensions(s.embedding_model, s.dimensions) == 512
    assert request_dimensions("text-embedding-3-small", 1536) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHUNK_TOKENS": "9000"}, "chunk_tokens"),
        ({"CHUNK_TOKENS": "100", "CHUNK_OVERLAP_TOKENS": "100"}, "CHUNK_OVERLAP_TOKENS"),
        ({"EMBEDDING_DIMENSIONS": "2000"}, "native"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_scoped_settings_refuse_a_field_outside_the_functions_mixins() -> None:
    from batch_embedder.settings import (
        EmbeddingSettings,
        StorageSettings,
        UndeclaredSettingError,
        scoped,
    )

    full = Settings(chunk_tokens=256, chunk_overlap_tokens=32, jobs_table="jobs")
    view = scoped(full, (EmbeddingSettings, StorageSettings))
    assert isinstance(view, Settings)
    assert (view.jobs_table, view.dimensions) == ("jobs", 1536)  # declared: read as usual
    with pytest.raises(UndeclaredSettingError, match="CHUNK_TOKENS"):
        _ = view.chunk_tokens  # another mixin's field: refused, not the default
    with pytest.raises(UndeclaredSettingError, match="SYNC_PREFIXES"):
        view.urgent_prefixes()  # a method reading one is refused too
    assert view.model_dump()["chunk_tokens"] == 256  # the values are all there


def test_a_step_reading_an_undeclared_setting_fails_through_its_handler() -> None:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from pydantic import BaseModel

    from batch_embedder.handler import step_handler
    from batch_embedder.service_models import ScheduledEvent
    from batch_embedder.settings import StorageSettings, UndeclaredSettingError

    class Out(BaseModel):
        value: str

    def step(event: ScheduledEvent, settings: Settings) -> Out:
        return Out(value=str(settings.embed_rounds))

    handler = step_handler(ScheduledEvent, settings=(StorageSettings,))(step)
    assert handler.settings_mixins == (StorageSettings,)  # type: ignore[attr-defined]
    context = LambdaContext()
    context._memory_limit_in_mb = 128  # type: ignore[attr-defined]
    context._function_name = "f"  # type: ignore[attr-defined]
    context._aws_request_id = "r"  # type: ignore[attr-defined]
    context._invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:f"  # type: ignore[attr-defined]
    with pytest.raises(UndeclaredSettingError, match="EMBED_ROUNDS"):
        handler({"id": "e", "time": "2026-12-03T00:00:00Z", "source": "test"}, context)

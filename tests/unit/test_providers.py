"""Providers behind one interface: what requests name, which API, which price (pure)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from batch_embedder.openai import pricing
from batch_embedder.openai.client import (
    AZURE_BATCH_ENDPOINT,
    LOCAL_PROVIDER_KEY,
    OPENAI_BATCH_ENDPOINT,
    batch_endpoint,
    check_provider,
    get_client,
    request_dimensions_for,
    request_model,
    sync_only,
)
from batch_embedder.settings import Settings

MODEL = "text-embedding-3-small"


def settings(**env: object) -> Settings:
    return Settings(openai_api_key="sk-unit", **env)  # type: ignore[arg-type]


def test_request_model_is_the_azure_deployment_and_the_model_elsewhere() -> None:
    assert request_model(settings(), MODEL) == MODEL
    assert request_model(settings(embedding_provider="compatible"), "nomic-embed-text") == (
        "nomic-embed-text"
    )
    azure = settings(embedding_provider="azure", azure_openai_deployment="embed-prod")
    assert request_model(azure, MODEL) == "embed-prod"
    # No deployment configured: a deployment named after its model.
    assert request_model(settings(embedding_provider="azure"), MODEL) == MODEL
    # OpenAI ignores AZURE_OPENAI_DEPLOYMENT.
    assert request_model(settings(azure_openai_deployment="embed-prod"), MODEL) == MODEL


def test_batch_endpoint_and_which_providers_go_all_synchronous() -> None:
    assert batch_endpoint(settings()) == OPENAI_BATCH_ENDPOINT == "/v1/embeddings"
    assert batch_endpoint(settings(embedding_provider="azure")) == AZURE_BATCH_ENDPOINT
    assert AZURE_BATCH_ENDPOINT == "/embeddings"
    assert not sync_only(settings())
    assert sync_only(settings(embedding_provider="compatible"))
    assert sync_only(settings(embedding_provider="azure"))  # no batch for embeddings
    assert not sync_only(settings(embedding_provider="azure", azure_openai_batch=True))


def test_dimensions_are_not_sent_to_a_compatible_server_for_models_it_alone_knows() -> None:
    compatible = settings(embedding_provider="compatible")
    assert request_dimensions_for(compatible, "nomic-embed-text", 768) is None
    assert request_dimensions_for(compatible, MODEL, 256) == 256
    assert request_dimensions_for(settings(), MODEL, 1536) is None  # native: not sent
    assert request_dimensions_for(settings(), MODEL, 512) == 512
    assert request_dimensions_for(settings(), "custom-model", 768) == 768


def test_settings_read_the_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_PROVIDER", "azure")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", " https://res.openai.azure.com/ ")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "embed-prod")
    monkeypatch.setenv("AZURE_OPENAI_AUTH", "entra")
    monkeypatch.setenv("AZURE_OPENAI_BATCH", "true")
    s = Settings()
    assert s.embedding_provider == "azure"
    assert s.azure_openai_endpoint == "https://res.openai.azure.com"
    assert s.azure_openai_api_version == "2024-10-21"
    assert (s.azure_openai_deployment, s.azure_openai_auth, s.azure_openai_batch) == (
        "embed-prod",
        "entra",
        True,
    )
    monkeypatch.setenv("EMBEDDING_PROVIDER", "bedrock")
    with pytest.raises(ValueError, match="embedding_provider"):
        Settings()


def test_get_client_builds_the_provider_s_client() -> None:
    plain = get_client(settings(openai_base_url="http://127.0.0.1:9/v1"))
    assert type(plain) is openai.OpenAI and str(plain.base_url) == "http://127.0.0.1:9/v1/"
    azure = get_client(
        settings(embedding_provider="azure", azure_openai_endpoint="https://res.openai.azure.com")
    )
    assert isinstance(azure, openai.AzureOpenAI)
    assert str(azure.base_url) == "https://res.openai.azure.com/openai/"
    assert azure.api_key == "sk-unit" and azure._api_version == "2024-10-21"
    entra = get_client(
        settings(
            embedding_provider="azure",
            azure_openai_endpoint="https://res.openai.azure.com",
            azure_openai_auth="entra",
        )
    )
    assert isinstance(entra, openai.AzureOpenAI) and entra._azure_ad_token_provider is not None
    with pytest.raises(Exception, match="AZURE_OPENAI_ENDPOINT"):
        get_client(settings(embedding_provider="azure"))


def test_each_provider_has_its_own_price_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRICE_OVERRIDES", raising=False)
    monkeypatch.delenv("EMBEDDING_PROVIDER", raising=False)
    assert pricing.price_for(MODEL) == pricing.PRICES[MODEL]  # default provider: openai
    assert pricing.price_for(MODEL, "azure") == pricing.AZURE_PRICES[MODEL]
    assert pricing.AZURE_PRICES["text-embedding-3-large"].standard == Decimal("0.13")
    assert pricing.price_for("nomic-embed-text", "compatible") == pricing.FREE
    assert pricing.price_for(MODEL, "compatible").standard == 0
    with pytest.raises(KeyError, match="no azure price"):
        pricing.price_for("nomic-embed-text", "azure")
    # The default provider comes from EMBEDDING_PROVIDER.
    monkeypatch.setenv("EMBEDDING_PROVIDER", "compatible")
    assert pricing.price_for(MODEL) == pricing.FREE
    assert pricing.breakdown(MODEL, 1_000_000).standard_usd == 0
    # PRICE_OVERRIDES apply to the configured provider, a compatible server's included.
    monkeypatch.setenv("PRICE_OVERRIDES", "nomic-embed-text=0.004:0.002")
    assert pricing.price_for("nomic-embed-text") == pricing.Price(
        standard=Decimal("0.004"), batch=Decimal("0.002")
    )
    monkeypatch.setenv("EMBEDDING_PROVIDER", "nope")
    with pytest.raises(ValueError, match="EMBEDDING_PROVIDER"):
        pricing.price_for(MODEL)


def test_every_price_table_entry_has_batch_at_half_or_zero() -> None:
    for table in (pricing.PRICES, pricing.AZURE_PRICES):
        for model, price in table.items():
            assert price.batch * 2 == price.standard, model


def test_the_local_provider_goes_all_synchronous_free_and_checks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = settings(embedding_provider="local", embedding_model="local-minilm")
    assert sync_only(local)
    assert local.dimensions == 384
    monkeypatch.delenv("PRICE_OVERRIDES", raising=False)
    monkeypatch.setenv("EMBEDDING_PROVIDER", "local")
    assert pricing.current_provider() == "local"
    assert pricing.price_for("local-minilm") == pricing.FREE
    assert pricing.TABLES["local"] == {"local-minilm": pricing.FREE}
    with pytest.raises(KeyError):
        pricing.price_for(MODEL)  # the local provider runs one model
    # No key, no endpoint: the check is a no-op (it would raise without a key otherwise),
    # and the client the batch-side code may ask for needs no secret.
    check_provider(Settings(embedding_provider="local", embedding_model="local-minilm"),
                   "local-minilm", "doc.txt")  # fmt: skip
    client = get_client(Settings(embedding_provider="local", embedding_model="local-minilm"))
    assert client.api_key == LOCAL_PROVIDER_KEY
    # Elsewhere the fallback's model is priced 0 too: its ledger record costs nothing.
    monkeypatch.setenv("EMBEDDING_PROVIDER", "azure")
    assert pricing.price_for("local-minilm") == pricing.FREE

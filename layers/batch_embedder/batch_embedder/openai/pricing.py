"""Embedding prices: the one table every cost figure in the project comes from.

One table per provider (``EMBEDDING_PROVIDER``), in USD per 1,000,000 input tokens:

- ``openai`` (:data:`PRICES`): OpenAI's pricing page (https://openai.com/api/pricing/;
  the Batch API costs 50% of the standard price: https://platform.openai.com/docs/guides/batch).
- ``azure`` (:data:`AZURE_PRICES`): Azure OpenAI's pay-as-you-go (Global) prices of the
  embedding models, USD 0.00002 / 0.00013 / 0.0001 per 1,000 tokens
  (https://azure.microsoft.com/pricing/details/cognitive-services/openai-service/). Azure's
  Batch API does not take embeddings models
  (https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch, FAQ); for a
  deployment that does (``AZURE_OPENAI_BATCH``) the batch price is the documented "50%
  less cost than global standard" (same page).
- ``compatible``: your own server (vLLM, Ollama, TEI): no provider bill, 0 for any model.
- ``local`` (:data:`LOCAL_PRICES`): the local model (``local_model.py``) run inside the
  Lambdas, on your own CPU: no provider bill, 0.

Override or extend with the ``PRICE_OVERRIDES`` environment variable (``PriceOverrides``
parameter), which applies to the configured provider: ``model=standard:batch,...`` or the
JSON ``{"model": {"standard": 0.02, "batch": 0.01}}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from ..settings import Settings, parse_price_overrides

Provider = Literal["openai", "azure", "compatible", "local"]

ONE_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """Prices of one model in USD per 1M input tokens."""

    standard: Decimal
    batch: Decimal


PRICES: dict[str, Price] = {
    "text-embedding-3-small": Price(standard=Decimal("0.02"), batch=Decimal("0.01")),
    "text-embedding-3-large": Price(standard=Decimal("0.13"), batch=Decimal("0.065")),
    "text-embedding-ada-002": Price(standard=Decimal("0.10"), batch=Decimal("0.05")),
    # The local model (``local_model.py``) runs on your own CPU: no provider bill.
    "local-minilm": Price(standard=Decimal(0), batch=Decimal(0)),
}

#: Azure OpenAI, by model (not deployment) name; sources in the module docstring.
AZURE_PRICES: dict[str, Price] = {
    "text-embedding-3-small": Price(standard=Decimal("0.02"), batch=Decimal("0.01")),
    "text-embedding-3-large": Price(standard=Decimal("0.13"), batch=Decimal("0.065")),
    "text-embedding-ada-002": Price(standard=Decimal("0.10"), batch=Decimal("0.05")),
}

#: Price of every model of a ``compatible`` server: it runs on your own hardware.
FREE = Price(standard=Decimal(0), batch=Decimal(0))

#: The ``local`` provider (and the ``local`` fallback): the local model, free.
LOCAL_PRICES: dict[str, Price] = {"local-minilm": FREE}

TABLES: dict[Provider, dict[str, Price]] = {
    "openai": PRICES,
    "azure": AZURE_PRICES,
    "compatible": {},
    "local": LOCAL_PRICES,
}


def current_provider() -> Provider:
    """``EMBEDDING_PROVIDER`` from the environment (``openai`` when unset).

    Raises:
        ValueError: it is not ``openai``, ``azure``, ``compatible`` or ``local``.
    """
    value = os.environ.get("EMBEDDING_PROVIDER", "").strip().lower() or "openai"
    for provider in TABLES:
        if provider == value:
            return provider
    raise ValueError(f"EMBEDDING_PROVIDER={value!r}: want openai, azure, compatible or local")


def price_for(
    model: str, provider: Provider | None = None, *, overrides: str | None = None
) -> Price:
    """The price of ``model`` at ``provider`` (default: ``EMBEDDING_PROVIDER``), with
    ``overrides`` (a ``PRICE_OVERRIDES`` value; default: the environment's) applied; USD
    per 1M input tokens. The steps pass both from their settings (:func:`settings_price`).

    Raises:
        KeyError: the model is in neither the provider's table nor the overrides (never
            for ``compatible``, whose models are free).
    """
    provider = provider or current_provider()
    if overrides is None:
        overrides = os.environ.get("PRICE_OVERRIDES", "")
    prices = parse_price_overrides(overrides)
    if model in prices:
        standard, batch = prices[model]
        return Price(standard=standard, batch=batch)
    table = TABLES[provider]
    if model in table:
        return table[model]
    if provider == "compatible" or model == "local-minilm":  # your own hardware
        return FREE
    raise KeyError(f"no {provider} price for model {model!r}; add it to PRICE_OVERRIDES")


def cost_usd(tokens: int, usd_per_million: Decimal) -> Decimal:
    """Cost in USD of ``tokens`` at ``usd_per_million``, rounded to 1e-9 USD."""
    return (Decimal(tokens) * usd_per_million / ONE_MILLION).quantize(
        Decimal("0.000000001"), rounding=ROUND_HALF_UP
    )


@dataclass(frozen=True)
class CostBreakdown:
    """What ``tokens`` cost through the Batch API and what they would cost at standard price."""

    tokens: int
    batch_usd: Decimal
    standard_usd: Decimal

    @property
    def saved_usd(self) -> Decimal:
        """Standard-price cost minus batch cost, in USD."""
        return self.standard_usd - self.batch_usd


def settings_price(settings: Settings, model: str) -> Price:
    """:func:`price_for` with the provider and the overrides of a function's settings (it
    must declare ``EmbeddingSettings`` and ``PricingSettings``).

    Raises:
        KeyError: as :func:`price_for`.
    """
    return price_for(model, settings.embedding_provider, overrides=settings.price_overrides)


def breakdown(
    model: str, tokens: int, provider: Provider | None = None, *, price: Price | None = None
) -> CostBreakdown:
    """Batch and standard cost of ``tokens`` input tokens of ``model`` at ``price`` (default:
    :func:`price_for` at ``provider``, default ``EMBEDDING_PROVIDER``)."""
    price = price or price_for(model, provider)
    return CostBreakdown(
        tokens=tokens,
        batch_usd=cost_usd(tokens, price.batch),
        standard_usd=cost_usd(tokens, price.standard),
    )

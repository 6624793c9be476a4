"""Embedding prices: the one table every cost figure in the project comes from.

USD per 1,000,000 input tokens, from OpenAI's pricing page
(https://openai.com/api/pricing/; the Batch API costs 50% of the standard price:
https://platform.openai.com/docs/guides/batch). Override or extend with the
``PRICE_OVERRIDES`` environment variable (``PriceOverrides`` parameter):
``model=standard:batch,...`` or the JSON ``{"model": {"standard": 0.02, "batch": 0.01}}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from ..settings import parse_price_overrides

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
}


def price_for(model: str) -> Price:
    """The price of ``model``, with ``PRICE_OVERRIDES`` applied.

    Raises:
        KeyError: the model is in neither the table nor the overrides.
    """
    overrides = parse_price_overrides(os.environ.get("PRICE_OVERRIDES", ""))
    if model in overrides:
        standard, batch = overrides[model]
        return Price(standard=standard, batch=batch)
    try:
        return PRICES[model]
    except KeyError:
        raise KeyError(f"no price for model {model!r}; add it to PRICE_OVERRIDES") from None


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


def breakdown(model: str, tokens: int) -> CostBreakdown:
    """Batch and standard cost of ``tokens`` input tokens of ``model``."""
    price = price_for(model)
    return CostBreakdown(
        tokens=tokens,
        batch_usd=cost_usd(tokens, price.batch),
        standard_usd=cost_usd(tokens, price.standard),
    )

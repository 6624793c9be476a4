"""Parsing of the comma-list settings (``PREFIX_TOKEN_LIMITS``, ``PRICE_OVERRIDES``)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any


def _comma_items(raw: str) -> list[tuple[str, str]]:
    """``a=1,b=2`` as ``[("a", "1"), ("b", "2")]``; an item without ``=`` is an error."""
    items = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"item {item!r} is not name=value")
        items.append((name.strip(), value.strip()))
    return items


def parse_prefix_token_limits(raw: str) -> dict[str, int]:
    """``PREFIX_TOKEN_LIMITS``: ``tenant-a/=1000000,tenant-b/=500`` or the JSON object form.

    Raises:
        ValueError: an item is not ``prefix=tokens`` with a whole number >= 0 (the message
            names the item).
    """
    text = raw.strip()
    if not text:
        return {}
    if text.startswith("{"):
        pairs = [(str(k), str(v)) for k, v in _json_object(text, "PREFIX_TOKEN_LIMITS").items()]
    else:
        try:
            pairs = _comma_items(text)
        except ValueError as exc:
            raise ValueError(f"PREFIX_TOKEN_LIMITS: {exc} (want prefix=tokens)") from None
    limits: dict[str, int] = {}
    for prefix, value in pairs:
        try:
            tokens = int(value)
        except ValueError:
            tokens = -1
        if tokens < 0:
            raise ValueError(
                f"PREFIX_TOKEN_LIMITS: item {prefix}={value}: the limit must be a whole "
                "number of tokens >= 0"
            )
        limits[prefix] = tokens
    return limits


def _json_object(text: str, name: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object.

    Raises:
        ValueError: it is not JSON, or not an object (the message names ``name``).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{name} JSON must be an object")
    return data


def parse_price_overrides(raw: str) -> dict[str, tuple[Decimal, Decimal]]:
    """``PRICE_OVERRIDES``: ``model=standard:batch,...`` (USD per 1M tokens) or the JSON
    ``{"model": {"standard": 0.02, "batch": 0.01}}``; returns ``{model: (standard, batch)}``.

    Raises:
        ValueError: an item is malformed or a price is not a number >= 0 (the message names
            the item).
    """
    text = raw.strip()
    if not text:
        return {}
    pairs: list[tuple[str, Any, Any]] = []
    if text.startswith("{"):
        for model, entry in _json_object(text, "PRICE_OVERRIDES").items():
            if not isinstance(entry, dict) or not {"standard", "batch"} <= set(entry):
                raise ValueError(f"PRICE_OVERRIDES: item {model!r} needs standard and batch prices")
            pairs.append((str(model), entry["standard"], entry["batch"]))
    else:
        try:
            items = _comma_items(text)
        except ValueError as exc:
            raise ValueError(f"PRICE_OVERRIDES: {exc} (want model=standard:batch)") from None
        for model, value in items:
            standard, sep, batch = value.partition(":")
            if not sep:
                raise ValueError(
                    f"PRICE_OVERRIDES: item {model}={value} is not model=standard:batch"
                )
            pairs.append((model, standard, batch))
    prices: dict[str, tuple[Decimal, Decimal]] = {}
    for model, standard, batch in pairs:
        try:
            pair = (Decimal(str(standard).strip()), Decimal(str(batch).strip()))
        except InvalidOperation:
            pair = (Decimal(-1), Decimal(-1))
        if not all(p.is_finite() and p >= 0 for p in pair):
            raise ValueError(
                f"PRICE_OVERRIDES: item {model}={standard}:{batch}: prices must be numbers >= 0"
            )
        prices[model] = pair
    return prices

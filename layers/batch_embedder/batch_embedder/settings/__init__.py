"""Settings read from the environment: small mixins, composed per function.

:class:`Settings` is every mixin together (the local stack, the CLI and the tests use it).
A Lambda declares the mixins its steps read (``step_handler(..., settings=...)`` in
``functions/<step>/app.py``); its handler gets a :func:`scoped` view, on which reading a
field outside those mixins raises :class:`UndeclaredSettingError` instead of silently
taking the default. ``template.yaml`` gives each function exactly the variables of its
mixins, and ``tests/infra/test_template.py`` fails when one is missing or extra.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from .mixins import (
    MAX_TOKENS_PER_INPUT,
    NATIVE_DIMENSIONS,
    BatchSettings,
    BudgetSettings,
    ChunkingSettings,
    DatabaseSettings,
    EmbeddingSettings,
    GroupingSettings,
    JobsTableSettings,
    PricingSettings,
    ProviderSettings,
    RateLimitSettings,
    SecretsSettings,
    StorageSettings,
    SyncSettings,
    UploadQueueSettings,
    UsageTableSettings,
    WebhookSettings,
    WorkBucketSettings,
)
from .parsing import parse_prefix_token_limits, parse_price_overrides

__all__ = [
    "BATCH_POOL",
    "MAX_TOKENS_PER_INPUT",
    "NATIVE_DIMENSIONS",
    "PROVIDER",
    "SETTLES",
    "TABLES",
    "BatchSettings",
    "BudgetSettings",
    "ChunkingSettings",
    "DatabaseSettings",
    "EmbeddingSettings",
    "GroupingSettings",
    "JobsTableSettings",
    "Mixins",
    "PricingSettings",
    "ProviderSettings",
    "RateLimitSettings",
    "SecretsSettings",
    "Settings",
    "StorageSettings",
    "SyncSettings",
    "UndeclaredSettingError",
    "UploadQueueSettings",
    "UsageTableSettings",
    "WebhookSettings",
    "WorkBucketSettings",
    "get_settings",
    "parse_prefix_token_limits",
    "parse_price_overrides",
    "request_dimensions",
    "scoped",
    "variables",
]

#: The mixins a function declares.
Mixins = tuple[type[BaseSettings], ...]


class Settings(
    EmbeddingSettings,
    ChunkingSettings,
    GroupingSettings,
    BudgetSettings,
    RateLimitSettings,
    BatchSettings,
    SyncSettings,
    StorageSettings,
    UploadQueueSettings,
    ProviderSettings,
    WebhookSettings,
    PricingSettings,
    DatabaseSettings,
):
    """Every setting (environment variables, case-insensitive).

    Raises:
        pydantic.ValidationError: a value is out of range (the message names the variable).
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")


#: Groups of mixins that several functions declare together.
#: Calls the provider: which model, and how to reach it.
PROVIDER: Mixins = (EmbeddingSettings, ProviderSettings)
#: The jobs and usage tables.
TABLES: Mixins = (JobsTableSettings, UsageTableSettings)
#: Creates or finishes batches: the request lines and the Batch API's pool.
BATCH_POOL: Mixins = (BatchSettings, RateLimitSettings)
#: Brings in a job's batches and settles its bill (RecordFailure, the sweep, the
#: reconciler).
SETTLES: Mixins = (
    *PROVIDER,
    *BATCH_POOL,
    PricingSettings,
    WorkBucketSettings,
    *TABLES,
    DatabaseSettings,
)


class UndeclaredSettingError(RuntimeError):
    """A function read a setting outside the mixins it declares: its environment in
    ``template.yaml`` does not set that variable, so it would silently read the default."""


_FIELDS = frozenset(Settings.model_fields)


def variables(mixins: Mixins) -> set[str]:
    """The environment variables (upper case) of ``mixins``' fields."""
    return {name.upper() for mixin in mixins for name in mixin.model_fields}


@functools.lru_cache(maxsize=64)
def _scoped_class(mixins: Mixins) -> type[Settings]:
    allowed = frozenset(name for mixin in mixins for name in mixin.model_fields)
    declared = ", ".join(mixin.__name__ for mixin in mixins) or "none"

    def __getattribute__(self: Settings, name: str) -> Any:
        if name in _FIELDS and name not in allowed:
            raise UndeclaredSettingError(
                f"this function reads {name.upper()}, which its settings mixins ({declared}) "
                "do not include: add the mixin in its app.py and the variable to its "
                "Environment in template.yaml"
            )
        return object.__getattribute__(self, name)

    namespace = {"__getattribute__": __getattribute__, "__module__": __name__}
    return type("ScopedSettings", (Settings,), namespace)


def scoped(settings: Settings, mixins: Mixins) -> Settings:
    """``settings`` as a function declaring ``mixins`` sees it: the same values, but reading
    a field of another mixin raises :class:`UndeclaredSettingError`."""
    values = {name: object.__getattribute__(settings, name) for name in _FIELDS}
    return _scoped_class(mixins).model_construct(
        _fields_set=set(settings.model_fields_set), **values
    )


def request_dimensions(model: str, dimensions: int) -> int | None:
    """The ``dimensions`` request parameter: None (not sent) when it is the model's native size."""
    return None if NATIVE_DIMENSIONS.get(model) == dimensions else dimensions


def get_settings() -> Settings:
    """Settings read afresh from the environment (cheap; clients are cached elsewhere)."""
    return Settings()

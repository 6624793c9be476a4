"""One settings model for every Lambda and for the local stack, read from the environment.

Every field maps to the upper-case environment variable of the same name (``chunk_tokens``
is ``CHUNK_TOKENS``). ``template.yaml`` sets them from its parameters; the local stack sets
them from the same template with local overrides.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Hard per-input cap of the embeddings endpoint is 8,192 tokens; 8,191 is the safe figure
#: (OpenAI embeddings guide; see docs/openai-limits.md).
MAX_TOKENS_PER_INPUT = 8191

#: Native output dimensions per model (OpenAI model pages).
NATIVE_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    # all-MiniLM-L6-v2 (``local_model.py``), served by the local emulator or any
    # OpenAI-compatible endpoint that registers it.
    "local-minilm": 384,
}


class Settings(BaseSettings):
    """Runtime configuration (environment variables, case-insensitive).

    Raises:
        pydantic.ValidationError: a value is out of range (the message names the variable).
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # Embedding
    #: Who embeds: ``openai`` (OpenAI, or any server at ``OPENAI_BASE_URL`` with the Batch
    #: API), ``azure`` (Azure OpenAI, ``AZURE_OPENAI_*``) or ``compatible`` (an
    #: OpenAI-compatible ``/v1/embeddings`` server at ``OPENAI_BASE_URL`` without
    #: ``/v1/batches``: vLLM, Ollama, TEI; every document goes synchronous). See
    #: ``openai/client.py``.
    embedding_provider: Literal["openai", "azure", "compatible"] = "openai"
    embedding_model: str = "text-embedding-3-small"
    #: Output dimensions; 0 means the model's native size. Only text-embedding-3-* accept it.
    embedding_dimensions: int = Field(default=0, ge=0, le=3072)

    # Chunking (tokens of cl100k_base)
    chunk_tokens: int = Field(default=512, ge=16, le=MAX_TOKENS_PER_INPUT)
    chunk_overlap_tokens: int = Field(default=64, ge=0)
    #: Largest object accepted, in bytes.
    max_document_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    #: Fields read from each record of .json / .jsonl documents, comma-separated.
    json_text_fields: str = "text,content,body"
    #: Columns read from .csv documents, comma-separated.
    csv_text_columns: str = "text,content,body"

    #: Chunks per /v1/embeddings request line (OpenAI allows up to 2,048). Smaller lines
    #: lose less to one failed request and let an expired batch keep more finished work.
    batch_inputs_per_request: int = Field(default=2048, ge=1, le=2048)

    # Budgets (tokens per UTC day)
    #: Limit of each model's daily counter (all jobs of that model together).
    daily_token_limit: int = Field(default=50_000_000, ge=0)
    #: Extra limits per S3 key prefix (a project/tenant), a comma list
    #: ``tenant-a/=1000000,tenant-b/=500`` (the JSON object ``{"tenant-a/": 1000000}`` of
    #: older deployments is accepted too). A job under a prefix is charged to the prefix's
    #: counter too.
    prefix_token_limits: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    #: What an over-budget job does: end in BudgetExceeded, or wait for the next UTC day.
    budget_exceeded_action: Literal["fail", "wait"] = "fail"
    #: Seconds a reservation may stay held before the sweep releases it (crashed runs);
    #: longer than the Batch API's 24 h completion window.
    reservation_hold_seconds: int = Field(default=26 * 3600, ge=60)

    # Rate limits (reference tier-1 figures for text-embedding-3-small; see
    # docs/openai-limits.md). Shared by every Lambda through DynamoDB.
    #: Names the API key's limit pool (an org or key NAME, never the key itself).
    openai_rate_limit_scope: str = "default"
    embeddings_requests_per_minute: int = Field(default=3_000, gt=0)
    embeddings_tokens_per_minute: int = Field(default=1_000_000, gt=0)
    #: Longest a Lambda sleeps for the token bucket before giving the wait back.
    rate_limit_max_wait_seconds: float = Field(default=20.0, ge=0)
    #: Batch API pool: batch creations per hour ("2,000 per hour", unverified) and the
    #: model's enqueued-token cap ("3M tokens at tier 1", unverified).
    batch_creations_per_hour: int = Field(default=2_000, gt=0)
    batch_enqueued_token_cap: int = Field(default=3_000_000, gt=0)
    #: Seconds CreateBatch's Wait state waits when the queue is full.
    batch_queue_full_wait_seconds: int = Field(default=60, ge=1)

    # Cache and the synchronous path
    #: Key prefixes whose uploads are urgent (synchronous API, standard price), a comma list
    #: (``urgent/,alerts/``); objects tagged ``priority=urgent`` are urgent too.
    sync_prefixes: str = ""
    #: Finish a failed or expired batch's missing chunks through the synchronous API.
    sync_fallback: bool = True
    #: Lease of a claim on content, seconds: another execution takes it over once it runs
    #: out (the claimer crashed); longer than the Batch API's 24 h completion window.
    claim_stale_seconds: int = Field(default=26 * 3600, ge=60)
    #: FetchAndWrite passes per execution: contents still missing after a pass (failed
    #: lines, an expired batch's rest) go round again, at most this many times in all.
    embed_rounds: int = Field(default=3, ge=1, le=10)
    #: Days OpenAI keeps a batch's output and error files when nobody deletes them (they
    #: are deleted as soon as their vectors are stored): the batch's ``output_expires_after``
    #: (https://platform.openai.com/docs/api-reference/batch/create).
    output_retention_days: int = Field(default=7, ge=1, le=30)

    #: Grouping: the pipe's window (seconds) and largest group (uploads); recorded so the
    #: ledger can price the SQS and Pipes requests of a group.
    upload_batch_window_seconds: int = Field(default=60, ge=1, le=300)
    upload_batch_size: int = Field(default=500, ge=1, le=10_000)

    # Where things live
    work_bucket: str = ""
    jobs_table: str = ""
    usage_table: str = ""

    # OpenAI: a key straight from the environment (local runs) or a Secrets Manager secret.
    openai_api_key: SecretStr | None = None
    openai_api_key_secret_id: str = ""
    #: Empty means OpenAI itself; the local stack points it at its emulator.
    openai_base_url: str = ""
    openai_max_retries: int = Field(default=4, ge=0)
    #: The webhook signing secret (``whsec_...``) straight from the environment, or a secret.
    openai_webhook_secret: SecretStr | None = None
    openai_webhook_secret_secret_id: str = ""
    openai_timeout_seconds: float = Field(default=120.0, gt=0)
    # Azure OpenAI (EMBEDDING_PROVIDER=azure)
    #: The resource endpoint, ``https://<resource>.openai.azure.com``.
    azure_openai_endpoint: str = ""
    #: Data-plane ``api-version``: the latest GA release with embeddings, files and batches
    #: (https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle).
    azure_openai_api_version: str = "2024-10-21"
    #: Deployment name of the embedding model; empty means a deployment named after
    #: ``EMBEDDING_MODEL``. Sent where OpenAI takes the model name.
    azure_openai_deployment: str = ""
    #: ``key``: the API key of the OpenAI secret (``api-key`` header); ``entra``: a Microsoft
    #: Entra ID token from ``azure-identity``'s ``DefaultAzureCredential`` (extra ``azure``).
    azure_openai_auth: Literal["key", "entra"] = "key"
    #: Send the Azure deployment's non-urgent documents through the Batch API. Off by
    #: default: Azure's Batch API does not take embeddings models ("Can I use the batch API
    #: for embeddings models? This is currently not supported.",
    #: https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch); turn it on for a
    #: Global-Batch deployment that does.
    azure_openai_batch: bool = False
    #: Degraded mode: seconds an execution keeps waiting (``ProviderDegraded`` Wait states)
    #: for a provider that does not answer (connection errors, timeouts, 5xx) before it
    #: fails; see ``aws/provider_health.py``.
    provider_outage_seconds: int = Field(default=21_600, ge=0)
    #: Prices per 1M tokens overriding or extending ``pricing.PRICES``, a comma list
    #: ``model=standard:batch`` (or the JSON ``{"model": {"standard": s, "batch": b}}``);
    #: checked here, applied by :func:`batch_embedder.openai.pricing.price_for`.
    price_overrides: str = ""

    # Postgres: a URL straight from the environment or a Secrets Manager secret.
    database_url: SecretStr | None = None
    database_url_secret_id: str = ""

    #: Seconds a fetched secret is cached by Powertools Parameters.
    secret_max_age_seconds: int = Field(default=300, ge=0)

    @field_validator("prefix_token_limits", mode="before")
    @classmethod
    def _parse_prefix_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_prefix_token_limits(value)
        return value

    @field_validator("price_overrides")
    @classmethod
    def _check_price_overrides(cls, value: str) -> str:
        parse_price_overrides(value)
        return value

    @field_validator("openai_base_url", "azure_openai_endpoint")
    @classmethod
    def _strip_base_url(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _check_chunking(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"CHUNK_TOKENS ({self.chunk_tokens})"
            )
        native = NATIVE_DIMENSIONS.get(self.embedding_model)
        if self.embedding_dimensions and native and self.embedding_dimensions > native:
            raise ValueError(
                f"EMBEDDING_DIMENSIONS ({self.embedding_dimensions}) is larger than "
                f"{self.embedding_model}'s native {native}"
            )
        return self

    @property
    def dimensions(self) -> int:
        """Dimensions of the stored vectors: the configured value or the model's native size.

        Raises:
            ValueError: the model is unknown and no ``EMBEDDING_DIMENSIONS`` was given.
        """
        if self.embedding_dimensions:
            return self.embedding_dimensions
        try:
            return NATIVE_DIMENSIONS[self.embedding_model]
        except KeyError:
            raise ValueError(
                f"unknown model {self.embedding_model!r}: set EMBEDDING_DIMENSIONS"
            ) from None

    def urgent_prefixes(self) -> list[str]:
        """``SYNC_PREFIXES`` as a list."""
        return [p.strip() for p in self.sync_prefixes.split(",") if p.strip()]

    def json_fields(self) -> list[str]:
        """``JSON_TEXT_FIELDS`` as a list."""
        return [f.strip() for f in self.json_text_fields.split(",") if f.strip()]

    def csv_columns(self) -> list[str]:
        """``CSV_TEXT_COLUMNS`` as a list."""
        return [c.strip() for c in self.csv_text_columns.split(",") if c.strip()]


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


def request_dimensions(model: str, dimensions: int) -> int | None:
    """The ``dimensions`` request parameter: None (not sent) when it is the model's native size."""
    return None if NATIVE_DIMENSIONS.get(model) == dimensions else dimensions


def get_settings() -> Settings:
    """Settings read afresh from the environment (cheap; clients are cached elsewhere)."""
    return Settings()

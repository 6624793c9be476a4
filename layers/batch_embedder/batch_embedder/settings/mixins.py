"""The settings mixins: each a small group of environment variables that one concern reads.

Every field maps to the upper-case environment variable of the same name (``chunk_tokens``
is ``CHUNK_TOKENS``). A function's settings are the mixins its steps read
(:data:`batch_embedder.settings.FUNCTION_SETTINGS`), and ``template.yaml`` gives each
function exactly their variables (``tests/infra/test_template.py`` checks both ways).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .parsing import parse_prefix_token_limits, parse_price_overrides

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


class _EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")


class EmbeddingSettings(_EnvSettings):
    """Who embeds, with which model, at how many dimensions."""

    #: Who embeds: ``openai`` (OpenAI, or any server at ``OPENAI_BASE_URL`` with the Batch
    #: API), ``azure`` (Azure OpenAI, ``AZURE_OPENAI_*``), ``compatible`` (an
    #: OpenAI-compatible ``/v1/embeddings`` server at ``OPENAI_BASE_URL`` without
    #: ``/v1/batches``: vLLM, Ollama, TEI; every document goes synchronous). See
    #: ``openai/client.py``. ``local`` runs the local model (``local_model.py``,
    #: ``EMBEDDING_MODEL=local-minilm``) inside the Lambdas: free, synchronous.
    embedding_provider: Literal["openai", "azure", "compatible", "local"] = "openai"
    embedding_model: str = "text-embedding-3-small"
    #: Output dimensions; 0 means the model's native size. Only text-embedding-3-* accept it.
    embedding_dimensions: int = Field(default=0, ge=0, le=3072)
    #: Degraded mode: ``local`` embeds urgent documents with the local model while the
    #: provider does not answer (their rows carry ``local-minilm``), and re-embeds them with
    #: the provider once it is back; ``none`` makes them wait like the rest.
    fallback_provider: Literal["none", "local"] = "none"

    @model_validator(mode="after")
    def _check_dimensions(self) -> EmbeddingSettings:
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


class ChunkingSettings(_EnvSettings):
    """How documents are read and cut into chunks (tokens of cl100k_base)."""

    chunk_tokens: int = Field(default=512, ge=16, le=MAX_TOKENS_PER_INPUT)
    chunk_overlap_tokens: int = Field(default=64, ge=0)
    #: Largest object accepted, in bytes.
    max_document_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    #: Fields read from each record of .json / .jsonl documents, comma-separated.
    json_text_fields: str = "text,content,body"
    #: Columns read from .csv documents, comma-separated.
    csv_text_columns: str = "text,content,body"

    @model_validator(mode="after")
    def _check_overlap(self) -> ChunkingSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"CHUNK_TOKENS ({self.chunk_tokens})"
            )
        return self

    def json_fields(self) -> list[str]:
        """``JSON_TEXT_FIELDS`` as a list."""
        return [f.strip() for f in self.json_text_fields.split(",") if f.strip()]

    def csv_columns(self) -> list[str]:
        """``CSV_TEXT_COLUMNS`` as a list."""
        return [c.strip() for c in self.csv_text_columns.split(",") if c.strip()]


class GroupingSettings(_EnvSettings):
    """The pipe's grouping of uploads, recorded so the ledger can price a group's SQS and
    Pipes requests."""

    #: The pipe's window (seconds) and largest group (uploads).
    upload_batch_window_seconds: int = Field(default=60, ge=1, le=300)
    upload_batch_size: int = Field(default=500, ge=1, le=10_000)


class BudgetSettings(_EnvSettings):
    """Daily token budgets and their reservations (tokens per UTC day)."""

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

    @field_validator("prefix_token_limits", mode="before")
    @classmethod
    def _parse_prefix_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_prefix_token_limits(value)
        return value


class RateLimitSettings(_EnvSettings):
    """The token bucket of ``/v1/embeddings`` (reference tier-1 figures for
    text-embedding-3-small; see docs/openai-limits.md), shared through DynamoDB."""

    #: Names the API key's limit pool (an org or key NAME, never the key itself).
    openai_rate_limit_scope: str = "default"
    embeddings_requests_per_minute: int = Field(default=3_000, gt=0)
    embeddings_tokens_per_minute: int = Field(default=1_000_000, gt=0)
    #: Longest a Lambda sleeps for the token bucket before giving the wait back.
    rate_limit_max_wait_seconds: float = Field(default=20.0, ge=0)


class BatchSettings(_EnvSettings):
    """The Batch API: request lines, the queue pool, rounds and retention."""

    #: Chunks per /v1/embeddings request line (OpenAI allows up to 2,048). Smaller lines
    #: lose less to one failed request and let an expired batch keep more finished work.
    batch_inputs_per_request: int = Field(default=2048, ge=1, le=2048)
    #: Batch API pool: batch creations per hour ("2,000 per hour", unverified) and the
    #: model's enqueued-token cap ("3M tokens at tier 1", unverified).
    batch_creations_per_hour: int = Field(default=2_000, gt=0)
    batch_enqueued_token_cap: int = Field(default=3_000_000, gt=0)
    #: Seconds CreateBatch's Wait state waits when the queue is full.
    batch_queue_full_wait_seconds: int = Field(default=60, ge=1)
    #: FetchAndWrite passes per execution: contents still missing after a pass (failed
    #: lines, an expired batch's rest) go round again, at most this many times in all.
    embed_rounds: int = Field(default=3, ge=1, le=10)
    #: Days OpenAI keeps a batch's output and error files when nobody deletes them (they
    #: are deleted as soon as their vectors are stored): the batch's ``output_expires_after``
    #: (https://platform.openai.com/docs/api-reference/batch/create).
    output_retention_days: int = Field(default=7, ge=1, le=30)


class SyncSettings(_EnvSettings):
    """The synchronous path and the claims on content."""

    #: Key prefixes whose uploads are urgent (synchronous API, standard price), a comma list
    #: (``urgent/,alerts/``); objects tagged ``priority=urgent`` are urgent too.
    sync_prefixes: str = ""
    #: Finish a failed or expired batch's missing chunks through the synchronous API.
    sync_fallback: bool = True
    #: Lease of a claim on content, seconds: another execution takes it over once it runs
    #: out (the claimer crashed); longer than the Batch API's 24 h completion window.
    claim_stale_seconds: int = Field(default=26 * 3600, ge=60)

    def urgent_prefixes(self) -> list[str]:
        """``SYNC_PREFIXES`` as a list."""
        return [p.strip() for p in self.sync_prefixes.split(",") if p.strip()]


class WorkBucketSettings(_EnvSettings):
    """The work bucket (manifests, JSONL, results)."""

    work_bucket: str = ""


class JobsTableSettings(_EnvSettings):
    """The jobs table (job items, the batch registry)."""

    jobs_table: str = ""


class UsageTableSettings(_EnvSettings):
    """The usage table (token bucket, budgets, the ledger)."""

    usage_table: str = ""


class UploadQueueSettings(_EnvSettings):
    """The upload queue, where the reconciler re-submits what the fallback embedded."""

    upload_queue_url: str = ""


class StorageSettings(WorkBucketSettings, JobsTableSettings, UsageTableSettings):
    """Where things live: the work bucket and the two tables."""


class SecretsSettings(_EnvSettings):
    """How long fetched secrets are cached."""

    #: Seconds a fetched secret is cached by Powertools Parameters.
    secret_max_age_seconds: int = Field(default=300, ge=0)


class ProviderSettings(SecretsSettings):
    """How to reach the provider: key, endpoint, retries, Azure, the outage limit."""

    #: A key straight from the environment (local runs) or a Secrets Manager secret.
    openai_api_key: SecretStr | None = None
    openai_api_key_secret_id: str = ""
    #: Empty means OpenAI itself; the local stack points it at its emulator.
    openai_base_url: str = ""
    openai_max_retries: int = Field(default=4, ge=0)
    openai_timeout_seconds: float = Field(default=120.0, gt=0)
    #: The resource endpoint, ``https://<resource>.openai.azure.com`` (EMBEDDING_PROVIDER
    #: azure).
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

    @field_validator("openai_base_url", "azure_openai_endpoint")
    @classmethod
    def _strip_base_url(cls, value: str) -> str:
        return value.strip().rstrip("/")


class WebhookSettings(SecretsSettings):
    """The webhook signing secret (``whsec_...``)."""

    #: Straight from the environment, or a Secrets Manager secret.
    openai_webhook_secret: SecretStr | None = None
    openai_webhook_secret_secret_id: str = ""


class PricingSettings(_EnvSettings):
    """Prices that override or extend ``openai/pricing.py``."""

    #: Prices per 1M tokens overriding or extending ``pricing.PRICES``, a comma list
    #: ``model=standard:batch`` (or the JSON ``{"model": {"standard": s, "batch": b}}``);
    #: checked here, applied by :func:`batch_embedder.openai.pricing.price_for`.
    price_overrides: str = ""

    @field_validator("price_overrides")
    @classmethod
    def _check_price_overrides(cls, value: str) -> str:
        parse_price_overrides(value)
        return value


class DatabaseSettings(SecretsSettings):
    """Postgres: a URL straight from the environment or a Secrets Manager secret."""

    database_url: SecretStr | None = None
    database_url_secret_id: str = ""

"""Settings of the local OpenAI emulator (dev only, never deployed).

Every limit defaults to the figure in ``docs/openai-limits.md`` (the
contract the project codes against, itself taken from the openai SDK 3.54 types and OpenAI's
Batch / Embeddings guides); every timing is in seconds, every size in bytes, every token
count in cl100k_base tokens. All fields can be changed at run time through
``OpenAIEmulator.update_config(...)`` or ``POST /_emulator/config``.
"""

from __future__ import annotations

import base64
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["EmulatorConfig"]

MB = 1024 * 1024
#: Azure OpenAI data-plane API versions accepted by default: the GA ones with embeddings,
#: files and batches (2024-10-21 is the first GA version with the Batch API) and recent
#: previews (https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle).
AZURE_API_VERSIONS = (
    "2024-02-01",
    "2024-06-01",
    "2024-10-21",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
)


class EmulatorConfig(BaseModel):
    """Behaviour switches and limits of :class:`OpenAIEmulator`.

    Auth: with ``api_key`` set, every other Bearer key gets OpenAI's 401 (``code``
    ``invalid_api_key``, ``type`` ``invalid_request_error``, message "Incorrect API key
    provided: ..."), billed nothing. Setting ``api_key`` at run time to a value other than
    the one the client sends therefore "revokes" the key in use.

    Rate limits (synchronous ``/v1/embeddings`` only; batches are a separate pool, as at
    OpenAI): ``rpm_limit`` requests and ``tpm_limit`` tokens per 60-second sliding window,
    tier-1 reference figures for text-embedding-3-small; 0 disables enforcement.

    Batch lifecycle: each phase lasts at least its ``batch_*_seconds`` (the real work adds on
    top). ``batch_outcome`` picks how batches end: ``completed`` (default), ``expired``
    (only the first ``expire_completed_fraction`` of requests complete, the rest come back
    with ``batch_expired``), ``cancelled`` (the first ``expire_completed_fraction`` of
    requests complete, then the batch goes ``cancelling`` -> ``cancelled`` as if cancelled
    from outside; the rest appear in neither file and are not billed) or ``failed``
    (validation fails with code ``emulated_failure``).

    Fault injection for ``POST /v1/embeddings``: the next ``fail_next_requests_429``
    calls get a 429 with ``retry-after: retry_after_seconds``; the next
    ``fail_next_requests_5xx`` get a 500; ``insufficient_quota`` answers every call with
    429 ``insufficient_quota``. The counters go down as they fire. ``error_rate_429`` /
    ``error_rate_5xx`` fail each call at random (seeded by ``error_seed``). None of these
    bills anything.

    OpenAI outage: ``outage_seconds`` = N > 0 makes every ``/v1/*`` request fail for N
    seconds from the moment the field is set (the connection is closed with no HTTP answer:
    the SDK raises ``APIConnectionError``). ``/_emulator/*`` keeps working, batches keep
    running, webhook deliveries wait for the outage to end. See :mod:`.faults`.

    File expiry: ``expires_after`` on ``POST /v1/files`` and ``output_expires_after`` on
    ``POST /v1/batches`` accept ``seconds`` within ``file_expiry_min_seconds`` ..
    ``file_expiry_max_seconds`` (OpenAI: 3600 .. 2592000); expired files are deleted lazily.

    Webhooks (:mod:`.webhooks`): when ``webhook_url`` is set, every batch that reaches a
    terminal status posts a ``batch.<status>`` event there, signed like OpenAI's (Standard
    Webhooks: https://platform.openai.com/docs/guides/webhooks,
    https://www.standardwebhooks.com/). The ``webhook_*`` switches inject the faults a
    receiver must survive: drops, duplicates, delays, reordering, forged signatures, errors.

    Azure OpenAI: the same service is served under ``/openai/...`` with Azure's URL shapes,
    ``api-version`` query and ``api-key`` header (``azure_deployments``,
    ``azure_api_versions``; see :mod:`.app`).

    A batch keeps the config it was created with (timings, outcome, patterns, shuffle);
    the synchronous endpoint and the webhook sender read the current config when they act.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- auth ---------------------------------------------------------------------------
    api_key: str | None = Field(
        default=None,
        description="If set, the only Bearer key accepted (else any non-empty key is). Any "
        "other key gets 401 invalid_api_key; changing it at run time revokes the key in use.",
    )

    # --- OpenAI outage ---------------------------------------------------------------------
    outage_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Seconds, counted from when this field is set, during which every /v1/* "
        "request is refused by closing the connection without an HTTP answer (the SDK "
        "raises APIConnectionError). /_emulator/* still answers, batches keep running, "
        "webhook deliveries wait until it ends. 0 ends an outage at once.",
    )

    # --- synchronous rate limits (reference: tier-1 text-embedding-3-small) ---------------
    rpm_limit: int = Field(default=3000, ge=0, description="Requests per minute; 0 = off.")
    tpm_limit: int = Field(default=1_000_000, ge=0, description="Tokens per minute; 0 = off.")
    remaining_override: dict[str, int] | None = Field(
        default=None,
        description=(
            "Lower the advertised x-ratelimit-remaining-* headers: keys 'requests' and/or "
            "'tokens'. The smaller of this and the real remaining value is sent."
        ),
    )

    # --- per-request limits of /v1/embeddings (reference: Embeddings endpoint) ------------
    max_inputs_per_request: int = Field(default=2048, ge=1, description="Inputs per request.")
    max_tokens_per_input: int = Field(default=8192, ge=1, description="Tokens per input.")
    max_tokens_per_request: int = Field(
        default=300_000, ge=1, description="Tokens summed over all inputs of one request."
    )

    # --- files and batches (reference: Files API, Batch API) -----------------------------
    max_batch_file_bytes: int = Field(
        default=200 * MB,
        ge=1,
        description="Largest purpose=batch upload, bytes (200 MB; OpenAI's message quotes "
        "209715200, i.e. MiB).",
    )
    max_file_bytes: int = Field(default=512 * MB, ge=1, description="Largest upload, bytes.")
    max_batch_requests: int = Field(default=50_000, ge=1, description="Lines per batch file.")
    max_batch_inputs: int = Field(
        default=50_000, ge=1, description="Embedding inputs summed over a batch file."
    )
    batch_enqueued_token_limit: int = Field(
        default=0,
        ge=0,
        description=(
            "Organisation queue cap in tokens over all unfinished batches (tier 1 is reported "
            "as 3,000,000 for text-embedding-3-small, unverified); a batch that would pass it "
            "fails validation with code token_limit_exceeded. 0 = no cap."
        ),
    )
    batch_completion_window_seconds: int = Field(
        default=24 * 3600, ge=1, description="expires_at = created_at + this (24h window)."
    )

    # --- batch lifecycle timing, seconds ---------------------------------------------------
    batch_validating_seconds: float = Field(default=0.2, ge=0)
    batch_in_progress_seconds: float = Field(default=0.5, ge=0)
    batch_finalizing_seconds: float = Field(default=0.2, ge=0)
    batch_cancel_seconds: float = Field(default=0.2, ge=0)
    batch_workers: int = Field(
        default=1, ge=1, description="Batches computing embeddings at the same time."
    )

    # --- batch outcomes --------------------------------------------------------------------
    batch_outcome: Literal["completed", "expired", "cancelled", "failed"] = Field(
        default="completed",
        description="How batches end: completed, expired or cancelled (after the first "
        "expire_completed_fraction of requests), or failed (at validation).",
    )
    expire_completed_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share (0..1) of requests done when a batch expires or is cancelled "
        "(batch_outcome expired / cancelled); rounded down to whole requests.",
    )
    fail_custom_id_pattern: str | None = Field(
        default=None,
        description="Regex; batch requests whose custom_id matches (re.search) fail with 500.",
    )
    shuffle_output: bool = Field(
        default=True, description="Shuffle output/error file lines (OpenAI keeps no order)."
    )
    shuffle_seed: int = Field(default=0, description="Seed of the shuffle (random.Random).")

    # --- fault injection for POST /v1/embeddings -----------------------------------------
    fail_next_requests_429: int = Field(default=0, ge=0)
    fail_next_requests_5xx: int = Field(default=0, ge=0)
    retry_after_seconds: float = Field(
        default=1.0, ge=0, description="retry-after sent with injected 429s, seconds."
    )
    insufficient_quota: bool = False
    error_rate_429: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability (0..1) that a POST /v1/embeddings call gets 429 "
        "rate_limit_exceeded with retry-after: retry_after_seconds. Nothing is billed.",
    )
    error_rate_5xx: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability (0..1) that a POST /v1/embeddings call gets a 500 "
        "server_error. Nothing is billed. error_rate_429 + error_rate_5xx must be <= 1.",
    )
    error_seed: int = Field(
        default=0,
        description="Seed of the random.Random that draws error_rate_* faults; re-seeded "
        "whenever error_seed, error_rate_429 or error_rate_5xx is set (and on reset).",
    )

    # --- file expiry (reference: openai SDK FileCreateParams.ExpiresAfter) ---------------
    file_expiry_min_seconds: int = Field(
        default=3600,
        ge=1,
        description="Smallest expires_after / output_expires_after seconds accepted "
        "(OpenAI: 3600, one hour); lower it to test expiry quickly.",
    )
    file_expiry_max_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=1,
        description="Largest expires_after / output_expires_after seconds accepted "
        "(OpenAI: 2592000, 30 days).",
    )

    # --- batch webhooks (OpenAI webhooks / Standard Webhooks) ---------------------------------
    webhook_url: str | None = Field(
        default=None,
        description="http(s) URL that batch.* events are POSTed to; None = no webhooks. Read "
        "when a batch ends (and again before sending), not when it was created.",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Signing secret, 'whsec_<base64 key>' like OpenAI's (any other string is "
        "used as raw UTF-8 key bytes, as the openai SDK does). None = the fixed dev secret "
        "webhooks.DEFAULT_WEBHOOK_SECRET.",
    )
    webhook_drop: bool = Field(
        default=False,
        description="Never deliver (the event is only logged as 'dropped'): the receiver's "
        "fallback poller / reconciler has to notice the batch finished.",
    )
    webhook_duplicates: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Deliver each event this many times, all with the same webhook-id.",
    )
    webhook_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Wait this many seconds between the terminal status and the first delivery.",
    )
    webhook_reorder: bool = Field(
        default=False,
        description="Hold events for webhook_delay_seconds (at least 0.1 s) from the first "
        "held one, then deliver the held events newest first.",
    )
    webhook_forge: bool = Field(
        default=False,
        description="Sign with a wrong key: a correct receiver must refuse the delivery (400).",
    )
    webhook_max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Attempts per delivery; non-2xx answers and connection errors are retried "
        "after a short backoff (0.05 s doubling, at most 1 s). OpenAI itself retries with "
        "exponential backoff for up to 72 hours.",
    )

    # --- Azure OpenAI (routes under /openai/..., see app.py) ------------------------------
    azure_deployments: dict[str, str] = Field(
        default_factory=dict,
        description="Azure deployment name -> the model it serves (used for "
        "/openai/deployments/{deployment}/embeddings and the model of Azure batch lines); a "
        "deployment not listed serves the model of the same name.",
    )
    azure_api_versions: list[str] = Field(
        default_factory=lambda: list(AZURE_API_VERSIONS),
        description="api-version values the Azure routes accept; a missing one gets 404 "
        "'Resource not found', another one 400 'API version not supported'.",
    )

    @model_validator(mode="after")
    def _valid_rates(self) -> EmulatorConfig:
        if self.error_rate_429 + self.error_rate_5xx > 1:
            raise ValueError("error_rate_429 + error_rate_5xx must be at most 1")
        if self.file_expiry_min_seconds > self.file_expiry_max_seconds:
            raise ValueError("file_expiry_min_seconds must not exceed file_expiry_max_seconds")
        return self

    @field_validator("fail_custom_id_pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    @field_validator("webhook_url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _valid_secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("whsec_"):
            try:
                key = base64.b64decode(value[6:], validate=True)
            except ValueError as exc:
                raise ValueError(f"webhook_secret: invalid base64 after 'whsec_': {exc}") from exc
            if not key:
                raise ValueError("webhook_secret: empty key after 'whsec_'")
        elif not value:
            raise ValueError("webhook_secret must not be empty")
        return value

    @field_validator("remaining_override")
    @classmethod
    def _valid_override(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and not set(value) <= {"requests", "tokens"}:
            raise ValueError("remaining_override keys must be 'requests' and/or 'tokens'")
        return value

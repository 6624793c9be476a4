"""The official ``openai`` SDK client, pointed at OpenAI or any compatible server.

Which one is the configured provider (``EMBEDDING_PROVIDER``):

- ``openai``: ``openai.OpenAI``; ``OPENAI_BASE_URL`` empty -> api.openai.com, set -> that
  server (the local stack's emulator).
- ``compatible``: the same client at ``OPENAI_BASE_URL`` (vLLM, Ollama, TEI): synchronous
  ``/v1/embeddings`` only, so every document goes through EmbedSync (:func:`sync_only`).
- ``azure``: ``openai.AzureOpenAI`` at ``AZURE_OPENAI_ENDPOINT`` with
  ``AZURE_OPENAI_API_VERSION``, the key of the OpenAI secret (``api-key`` header) or a
  Microsoft Entra ID token; requests name the deployment where OpenAI takes the model
  (:func:`request_model`).

The model and dimensions stay the content key whatever the provider: a deployment name
never reaches the ``chunks`` table.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import openai
from aws_lambda_powertools import Logger

from ..aws import provider_health
from ..aws.secrets import openai_api_key
from ..errors import (
    ConfigurationError,
    ProviderAuthFailedError,
    ProviderOutageTooLongError,
    ProviderUnavailableError,
)
from ..settings import NATIVE_DIMENSIONS, Settings, request_dimensions

logger = Logger(child=True)

#: Scope of Entra ID tokens for Azure OpenAI
#: (https://learn.microsoft.com/azure/ai-foundry/openai/how-to/managed-identity).
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
#: ``url`` of batch request lines and ``endpoint`` of ``batches.create``: OpenAI's
#: (https://platform.openai.com/docs/api-reference/batch/create) and Azure's, which names
#: endpoints without ``/v1`` (``"/chat/completions"`` in
#: https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch, so ``/embeddings``).
OPENAI_BATCH_ENDPOINT = "/v1/embeddings"
#: The API key of the client :func:`get_client` returns for the ``local`` provider, which
#: never sends an embedding request (``local_model.py`` runs in-process).
LOCAL_PROVIDER_KEY = "local-provider-sends-nothing"
AZURE_BATCH_ENDPOINT = "/embeddings"

#: What counts as the provider not answering: connection refused or reset, timeouts
#: (``APITimeoutError`` is an ``APIConnectionError``) and 5xx answers
#: (``InternalServerError``, the SDK's class for every status >= 500:
#: https://github.com/openai/openai-python#handling-errors). Never a 4xx: a refused key,
#: an empty quota, a bad request or a 429 rate limit keep their own handling.
OUTAGE_ERRORS: tuple[type[openai.APIError], ...] = (
    openai.APIConnectionError,
    openai.InternalServerError,
)


class QuotaExhaustedError(Exception):
    """OpenAI answered 429 ``insufficient_quota``: the account is out of credit. Not retried."""


@functools.cache
def _client(api_key: str, base_url: str, max_retries: int, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key, base_url=base_url or None, max_retries=max_retries, timeout=timeout
    )


@functools.cache
def _azure_client(
    endpoint: str, api_version: str, api_key: str, entra: bool, max_retries: int, timeout: float
) -> openai.AzureOpenAI:
    if entra:
        return openai.AzureOpenAI(
            azure_endpoint=endpoint,
            api_version=api_version,
            azure_ad_token_provider=entra_token_provider(),
            max_retries=max_retries,
            timeout=timeout,
        )
    return openai.AzureOpenAI(
        azure_endpoint=endpoint,
        api_version=api_version,
        api_key=api_key,
        max_retries=max_retries,
        timeout=timeout,
    )


@functools.cache
def entra_token_provider() -> Callable[[], str]:
    """A Microsoft Entra ID bearer-token provider for Azure OpenAI: ``azure-identity``'s
    ``get_bearer_token_provider(DefaultAzureCredential(), ENTRA_SCOPE)``, which caches and
    refreshes the token (on Lambda: the function role's credentials through whatever
    ``DefaultAzureCredential`` finds, e.g. workload identity federation environment
    variables; https://learn.microsoft.com/python/api/azure-identity/azure.identity.defaultazurecredential).

    Raises:
        ConfigurationError: ``azure-identity`` is not installed (extra ``azure``).
    """
    try:
        identity = importlib.import_module("azure.identity")
    except ImportError:
        raise ConfigurationError(
            "AZURE_OPENAI_AUTH=entra needs azure-identity: pip install 'batch-embedder[azure]'"
        ) from None
    provider: Callable[[], str] = identity.get_bearer_token_provider(
        identity.DefaultAzureCredential(), ENTRA_SCOPE
    )
    return provider


def get_client(settings: Settings, *, max_retries: int | None = None) -> openai.OpenAI:
    """A cached client for the configured provider (``openai.AzureOpenAI`` for ``azure``,
    a subclass of ``openai.OpenAI``; ``openai.OpenAI`` at ``OPENAI_BASE_URL`` otherwise).

    The SDK retries 408/409/429/5xx and timeouts itself (``OPENAI_MAX_RETRIES`` times, with
    backoff and ``retry-after``), 429 ``insufficient_quota`` included; the state machine's
    ``Retry`` adds more on top. The synchronous path passes ``max_retries=0`` and retries
    with tenacity instead (see ``sync_embed``).

    Raises:
        ConfigurationError: no API key is configured (OpenAI, compatible, Azure with
            ``AZURE_OPENAI_AUTH=key``), ``AZURE_OPENAI_ENDPOINT`` is empty for ``azure``,
            or ``azure-identity`` is missing for ``AZURE_OPENAI_AUTH=entra``.
    """
    retries = settings.openai_max_retries if max_retries is None else max_retries
    if settings.embedding_provider == "local":
        # Nothing is sent: a client that needs no key, for the code paths that look for
        # batches or files (there are none).
        return _client(LOCAL_PROVIDER_KEY, settings.openai_base_url, retries, 1.0)
    if settings.embedding_provider == "azure":
        if not settings.azure_openai_endpoint:
            raise ConfigurationError(
                "EMBEDDING_PROVIDER=azure needs AZURE_OPENAI_ENDPOINT "
                "(https://<resource>.openai.azure.com)"
            )
        entra = settings.azure_openai_auth == "entra"
        return _azure_client(
            settings.azure_openai_endpoint,
            settings.azure_openai_api_version,
            "" if entra else openai_api_key(settings),
            entra,
            retries,
            settings.openai_timeout_seconds,
        )
    return _client(
        openai_api_key(settings),
        settings.openai_base_url,
        retries,
        settings.openai_timeout_seconds,
    )


def request_model(settings: Settings, model: str) -> str:
    """What requests name as the model: the Azure deployment for ``azure``
    (``AZURE_OPENAI_DEPLOYMENT``, or ``model`` when it is empty: a deployment named after
    its model), else ``model``. Used for ``embeddings.create(model=...)`` and the ``model``
    of batch request lines (Azure: "the model attribute ... set to match the name of the
    ... deployment", https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch).
    """
    if settings.embedding_provider == "azure":
        return settings.azure_openai_deployment or model
    return model


def request_dimensions_for(settings: Settings, model: str, dimensions: int) -> int | None:
    """The ``dimensions`` request parameter: None (not sent) at the model's native size,
    and for a ``compatible`` server's model this project does not know (vLLM rejects the
    parameter for models without Matryoshka support; the server returns its native size,
    which must equal ``EMBEDDING_DIMENSIONS``).
    """
    if settings.embedding_provider == "compatible" and model not in NATIVE_DIMENSIONS:
        return None
    return request_dimensions(model, dimensions)


def batch_endpoint(settings: Settings) -> str:
    """The batch ``endpoint`` and request lines' ``url``: ``/embeddings`` on Azure,
    ``/v1/embeddings`` elsewhere (see :data:`AZURE_BATCH_ENDPOINT`)."""
    return (
        AZURE_BATCH_ENDPOINT if settings.embedding_provider == "azure" else (OPENAI_BATCH_ENDPOINT)
    )


def sync_only(settings: Settings) -> bool:
    """Whether every content goes through the synchronous API: a ``compatible`` server
    (no ``/v1/batches``), the ``local`` provider (no API at all) or Azure without
    ``AZURE_OPENAI_BATCH`` (Azure's Batch API does not take embeddings models:
    https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch, FAQ "Can I use the
    batch API for embeddings models?")."""
    provider = settings.embedding_provider
    if provider in ("compatible", "local"):  # ``local``: the model runs in EmbedSync itself
        return True
    return provider == "azure" and not settings.azure_openai_batch


def raise_if_quota_exhausted(exc: openai.RateLimitError) -> None:
    """Re-raise a 429 ``insufficient_quota`` as ``QuotaExhaustedError`` (not retryable).

    Raises:
        QuotaExhaustedError: ``exc`` is an insufficient_quota error.
    """
    if exc.code == "insufficient_quota":
        raise QuotaExhaustedError(str(exc)) from exc


@contextmanager
def provider_calls(settings: Settings, *, job_id: str | None, source: str) -> Iterator[None]:
    """Run provider calls in degraded-mode accounting (``aws/provider_health.py``).

    An error of :data:`OUTAGE_ERRORS` escaping the block (after the client's own
    retries) is recorded and raised again as :class:`ProviderUnavailableError`, which the
    state machine catches into a ``ProviderDegraded`` Wait and then runs the step again.
    When this execution has been waiting longer than ``PROVIDER_OUTAGE_SECONDS``, it is
    :class:`ProviderOutageTooLongError` instead (not caught: the execution fails). Any
    other error passes through unchanged. A block that ends without error, or with a 4xx
    answer, clears the degraded state (one GetItem when there is none).

    Args:
        job_id: the execution's job id (what the outage limit is counted for).
        source: the documents, for the message.

    Raises:
        ProviderUnavailableError: the provider did not answer; wait and try again.
        ProviderOutageTooLongError: it has not answered for ``PROVIDER_OUTAGE_SECONDS``.
    """
    try:
        yield
    except OUTAGE_ERRORS as exc:
        error = f"{type(exc).__name__}: {exc}"
        outage = provider_health.record_outage(settings, error=error, job_id=job_id)
        if outage.waited_seconds >= settings.provider_outage_seconds:
            raise ProviderOutageTooLongError(
                f"{source}: {outage.provider} has not answered for "
                f"{int(outage.waited_seconds)} s (PROVIDER_OUTAGE_SECONDS="
                f"{settings.provider_outage_seconds}; degraded since epoch "
                f"{int(outage.degraded_since)}, last error {error[:200]}); this execution "
                "stopped waiting. Upload the documents again once it answers."
            ) from exc
        raise ProviderUnavailableError(
            f"{source}: {outage.provider} did not answer ({error[:200]}); waited "
            f"{int(outage.waited_seconds)} s of {settings.provider_outage_seconds} s"
        ) from exc
    except openai.APIStatusError:
        provider_health.recovered(settings)  # it answered, if with a 4xx
        raise
    provider_health.recovered(settings)


def check_provider(
    settings: Settings, model: str, source: str, *, job_id: str | None = None
) -> None:
    """Check that the provider answers and accepts the credentials, before anything is
    reserved or bought.

    One ``GET /v1/models/{model}`` (not billed:
    https://platform.openai.com/docs/api-reference/models/retrieve), in
    :func:`provider_calls`. Azure: the same call through ``AzureOpenAI``
    (``GET /openai/models/{model}?api-version=...``, Azure's "Models - Get", not billed:
    https://learn.microsoft.com/azure/ai-foundry/openai/reference), with the model name,
    not the deployment. A ``compatible`` server that has no such route (404, 405) answered
    all the same: it passes.

    Raises:
        ProviderAuthFailedError: 401 or 403: the key (or Entra ID token) is invalid,
            revoked or not allowed.
        ProviderUnavailableError: the provider did not answer (see :func:`provider_calls`),
            unless ``FALLBACK_PROVIDER=local``: then the outage is recorded and the check
            passes (urgent documents are embedded by the fallback, the others wait at
            BuildAndUploadJsonl).
        ProviderOutageTooLongError: not for ``PROVIDER_OUTAGE_SECONDS``.

    Nothing is checked for the ``local`` provider (no key, no endpoint).
    """
    provider = settings.embedding_provider
    if provider == "local":
        return  # the model runs in-process: no key, no endpoint
    try:
        with provider_calls(settings, job_id=job_id, source=source):
            get_client(settings).models.retrieve(model)
    except (ProviderUnavailableError, ProviderOutageTooLongError):
        if settings.fallback_provider != "local":
            raise
        # Degraded, with a fallback: urgent documents go on to EmbedSync, which embeds
        # them with the local model; the others wait at BuildAndUploadJsonl.
        logger.warning("provider unavailable: going on with the local fallback")
        return
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        reason = str(body.get("message") or exc.message)
        who, fix = {
            "openai": ("OpenAI refused the API key", "Put a valid key in the OpenAIApiKeySecret."),
            "compatible": (
                "the embeddings server refused the API key",
                "Put the server's key in the OpenAIApiKeySecret.",
            ),
            "azure": (
                "Azure OpenAI refused the credentials",
                "Put the resource's key in the OpenAIApiKeySecret (AzureOpenAIAuth=key) or "
                "give the identity the Cognitive Services OpenAI User role (entra).",
            ),
        }[provider]
        raise ProviderAuthFailedError(
            f"{source}: {who} ({exc.status_code}: {reason}); nothing was reserved or bought. {fix}"
        ) from exc
    except openai.NotFoundError:
        return  # the key works; an unknown model fails later with its own message
    except openai.APIStatusError as exc:
        if provider == "compatible" and exc.status_code == 405:
            return  # no /v1/models/{model} route, but it answered
        raise


def provider_answers(settings: Settings, model: str) -> bool:
    """Whether the provider answers now: one ``GET /v1/models/{model}`` (not billed, see
    :func:`check_provider`) in :func:`provider_calls`, which records an outage or clears
    it. Any answer counts, a 4xx included; the reconciler asks before re-submitting the
    documents the fallback embedded.

    Returns:
        False on an outage (connection error, timeout, 5xx); True otherwise, and always
        for the ``local`` provider.
    """
    if settings.embedding_provider == "local":
        return True
    try:
        with provider_calls(settings, job_id=None, source="the provider check"):
            get_client(settings).models.retrieve(model)
    except (ProviderUnavailableError, ProviderOutageTooLongError):
        return False
    except openai.APIStatusError:
        return True
    return True

"""The official ``openai`` SDK client, pointed at OpenAI or any compatible server.

``OPENAI_BASE_URL`` empty -> api.openai.com; set -> that server (the local stack's
emulator). Nothing else differs between the two.
"""

from __future__ import annotations

import functools

import openai

from ..aws.secrets import openai_api_key
from ..errors import ProviderAuthFailedError
from ..settings import Settings


class QuotaExhaustedError(Exception):
    """OpenAI answered 429 ``insufficient_quota``: the account is out of credit. Not retried."""


@functools.cache
def _client(api_key: str, base_url: str, max_retries: int, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key, base_url=base_url or None, max_retries=max_retries, timeout=timeout
    )


def get_client(settings: Settings, *, max_retries: int | None = None) -> openai.OpenAI:
    """A cached client for the configured key and base URL.

    The SDK retries 408/409/429/5xx and timeouts itself (``OPENAI_MAX_RETRIES`` times, with
    backoff and ``retry-after``), 429 ``insufficient_quota`` included; the state machine's
    ``Retry`` adds more on top. The synchronous path passes ``max_retries=0`` and retries
    with tenacity instead (see ``sync_embed``).

    Raises:
        ConfigurationError: no API key is configured.
    """
    return _client(
        openai_api_key(settings),
        settings.openai_base_url,
        settings.openai_max_retries if max_retries is None else max_retries,
        settings.openai_timeout_seconds,
    )


def raise_if_quota_exhausted(exc: openai.RateLimitError) -> None:
    """Re-raise a 429 ``insufficient_quota`` as ``QuotaExhaustedError`` (not retryable).

    Raises:
        QuotaExhaustedError: ``exc`` is an insufficient_quota error.
    """
    if exc.code == "insufficient_quota":
        raise QuotaExhaustedError(str(exc)) from exc


def check_provider(settings: Settings, model: str, source: str) -> None:
    """Check that OpenAI accepts the API key, before anything is reserved or bought.

    One ``GET /v1/models/{model}`` (not billed:
    https://platform.openai.com/docs/api-reference/models/retrieve).

    Raises:
        ProviderAuthFailedError: 401 or 403: the key is invalid, revoked or not allowed.
    """
    try:
        get_client(settings).models.retrieve(model)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        reason = str(body.get("message") or exc.message)
        raise ProviderAuthFailedError(
            f"{source}: OpenAI refused the API key ({exc.status_code}: {reason}); "
            "nothing was reserved or bought. Put a valid key in the OpenAIApiKeySecret."
        ) from exc
    except openai.NotFoundError:
        return  # the key works; an unknown model fails later with its own message

"""Secrets: the OpenAI API key and the database URL, from the environment or Secrets Manager.

Secrets Manager values are read with Powertools Parameters and cached for
``SECRET_MAX_AGE_SECONDS``. A secret still holding the template's placeholder is refused
with a message that says how to set it. Values are never logged.
"""

from __future__ import annotations

from pydantic import SecretStr

from ..errors import ConfigurationError
from ..settings import Settings
from .clients import secrets_provider

#: The value template.yaml creates the secrets with, until the user puts the real one.
PLACEHOLDER = "REPLACE_ME"


def _from_secret(secret_id: str, max_age: int, what: str) -> str:
    value = secrets_provider().get(secret_id, max_age=max_age)
    if not isinstance(value, str) or not value.strip() or value.strip() == PLACEHOLDER:
        raise ConfigurationError(
            f"secret {secret_id} ({what}) has not been set: "
            f"aws secretsmanager put-secret-value --secret-id {secret_id} --secret-string ..."
        )
    return value.strip()


def _resolve(direct: SecretStr | None, secret_id: str, max_age: int, what: str, env: str) -> str:
    if direct is not None:
        return direct.get_secret_value()
    if secret_id:
        return _from_secret(secret_id, max_age, what)
    raise ConfigurationError(f"set {env} or {env}_SECRET_ID")


def openai_api_key(settings: Settings) -> str:
    """The OpenAI API key: ``OPENAI_API_KEY`` or the secret ``OPENAI_API_KEY_SECRET_ID``.

    Raises:
        ConfigurationError: neither is set, or the secret holds the placeholder.
    """
    return _resolve(
        settings.openai_api_key,
        settings.openai_api_key_secret_id,
        settings.secret_max_age_seconds,
        "OpenAI API key",
        "OPENAI_API_KEY",
    )


def database_url(settings: Settings) -> str:
    """The Postgres URL: ``DATABASE_URL`` or the secret ``DATABASE_URL_SECRET_ID``.

    Raises:
        ConfigurationError: neither is set, or the secret holds the placeholder.
    """
    return _resolve(
        settings.database_url,
        settings.database_url_secret_id,
        settings.secret_max_age_seconds,
        "DATABASE_URL",
        "DATABASE_URL",
    )


def webhook_secret(settings: Settings) -> str:
    """The OpenAI webhook signing secret (``whsec_...``): ``OPENAI_WEBHOOK_SECRET`` or the
    secret ``OPENAI_WEBHOOK_SECRET_SECRET_ID``. It is shown once when the endpoint is
    created (https://platform.openai.com/docs/guides/webhooks).

    Raises:
        ConfigurationError: neither is set, or the secret holds the placeholder.
    """
    return _resolve(
        settings.openai_webhook_secret,
        settings.openai_webhook_secret_secret_id,
        settings.secret_max_age_seconds,
        "OpenAI webhook secret",
        "OPENAI_WEBHOOK_SECRET",
    )

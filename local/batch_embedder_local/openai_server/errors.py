"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Messages copy the wording OpenAI is known to use where it is documented or widely reported
(401 key messages, ``Invalid URL (...)``, ``Rate limit reached for ...``, the 300,000-token
message, ``The model `X` does not exist ...``); the others are the emulator's own and say
so by being plain.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from openai.types.shared import ErrorObject

__all__ = ["APIError", "AzureError", "error_body", "new_id"]


def new_id(prefix: str) -> str:
    """A fresh random id such as ``file-3f2a...`` or ``batch_9c1e...`` (32 hex digits)."""
    return f"{prefix}{uuid.uuid4().hex}"


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    """The JSON object OpenAI sends with every non-2xx response:
    ``{"error": {"message", "type", "param", "code"}}`` (``openai.types.shared.ErrorObject``,
    without the fields OpenAI does not send on these endpoints)."""
    error = ErrorObject.model_construct(message=message, type=type_, param=param, code=code)
    dumped = error.model_dump()
    return {"error": {key: dumped[key] for key in ("message", "type", "param", "code")}}


class APIError(Exception):
    """An HTTP error answer (status + OpenAI error body + extra headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object."""
        return error_body(self.message, self.type, self.param, self.code)

    def body_bytes(self) -> bytes:
        """:meth:`body` as JSON bytes."""
        return json.dumps(self.body()).encode("utf-8")


class AzureError(APIError):
    """An Azure OpenAI-style error answer: ``{"error": {"code": ..., "message": ...}}``.

    Azure's gateway answers some requests (unknown ``api-version``, unknown deployment,
    wrong key) before they reach the OpenAI-shaped service, with this shorter shape
    (https://learn.microsoft.com/azure/ai-foundry/openai/reference).
    """

    def body(self) -> dict[str, Any]:
        """The ``{"error": {"code", "message"}}`` object."""
        return {"error": {"code": self.code, "message": self.message}}


def model_not_found(model: str) -> APIError:
    """404 for an unknown model, with OpenAI's exact wording."""
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def invalid_value(param: str, value: str, allowed: Sequence[str]) -> APIError:
    """OpenAI's 400 ``invalid_value`` for a parameter outside its allowed values."""
    return APIError(
        400,
        f"Invalid value: '{value}'. Supported values are: "
        + ", ".join(f"'{a}'" for a in allowed)
        + ".",
        param=param,
        code="invalid_value",
    )


def invalid_input() -> APIError:
    """400 OpenAI answers for an empty string (or otherwise malformed) ``input``."""
    return APIError(
        400,
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
        param="input",
    )

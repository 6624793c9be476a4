"""Outermost ASGI layer of the emulator: outages, auth, Azure ``api-version``, headers.

- An emulated outage (:mod:`.faults`) closes the connection of every ``/v1`` or
  ``/openai`` request without an HTTP answer.
- OpenAI routes need ``Authorization: Bearer KEY`` (401 wording as OpenAI's); Azure routes
  need ``?api-version=`` from ``EmulatorConfig.azure_api_versions`` (404 "Resource not
  found" when missing, 400 "API version not supported" otherwise) and ``api-key: KEY`` or
  an Entra ID ``Authorization: Bearer TOKEN`` (401 "Access denied ..."), as Azure answers
  (https://learn.microsoft.com/azure/ai-foundry/openai/reference).
- Every answer gets ``x-request-id``; API answers get ``x-ratelimit-*``,
  ``openai-processing-ms`` and ``openai-version``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
import httpx2
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, AzureError, new_id

if TYPE_CHECKING:
    from .server import OpenAIEmulator

__all__ = ["AZURE_NOT_FOUND", "DROP_CONNECTION", "Gate", "error_response", "json_response"]

#: Key of ``scope["state"]`` holding a callable that aborts the request's TCP connection
#: (set by the uvicorn protocol of :mod:`.server`); without it an outage raises instead.
DROP_CONNECTION = "emulator.drop_connection"
AZURE_NOT_FOUND = "Resource not found"
AZURE_ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint "
    "for your resource."
)
OPENAI_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
    "field (with blank username) if you're accessing the API from your browser and are "
    "prompted for a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact ``application/json`` answer."""
    body = json.dumps(obj, separators=(",", ":"))
    return Response(body, status, headers=headers, media_type="application/json")


def error_response(exc: APIError) -> Response:
    """The JSON answer of an :class:`.errors.APIError` (status, body, extra headers)."""
    return json_response(exc.body(), exc.status, exc.headers)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1")).strip()
    return ""


class Gate:
    """Outermost ASGI layer: outage refusals, auth, api-version and the common headers."""

    def __init__(self, emu: OpenAIEmulator, app: ASGIApp) -> None:
        self.emu = emu
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/")}
            path = scope["path"]
        kind = "v1" if path.startswith("/v1/") else "azure" if path.startswith("/openai/") else ""
        request_id, t0 = new_id("req_"), time.monotonic()
        emu = self.emu

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                if kind:
                    cfg = emu.current_config()
                    state = emu.limiter.state(cfg.rpm_limit, cfg.tpm_limit, cfg.remaining_override)
                    for name, value in state.headers().items():
                        headers[name] = value
                    headers["openai-processing-ms"] = str(int((time.monotonic() - t0) * 1000))
                    headers["openai-version"] = "2020-10-01"
            await send(message)

        if kind:
            emu.counters.add(api_requests=1)
            if emu.faults.refuse():
                await _drop(scope, receive)
                return
            try:
                self._check(scope, kind)
            except APIError as exc:
                if exc.status == 401:
                    emu.counters.add(unauthorized=1)
                await error_response(exc)(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: Scope, kind: str) -> None:
        """Raise the 401 / Azure api-version error for an API request, if any."""
        expected = self.emu.current_config().api_key
        scheme, _, bearer = _header(scope, b"authorization").partition(" ")
        bearer = bearer.strip() if scheme.lower() == "bearer" else ""
        if kind == "azure":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            version = query.get("api-version", [""])[0]
            if not version:
                raise AzureError(404, AZURE_NOT_FOUND, code="404")
            if version not in self.emu.current_config().azure_api_versions:
                raise AzureError(400, "API version not supported", code="BadRequest")
            key = _header(scope, b"api-key") or bearer
            if not key or (expected is not None and key != expected):
                raise AzureError(401, AZURE_ACCESS_DENIED, code="401")
            return
        if not bearer:
            raise APIError(401, OPENAI_NO_KEY)
        if expected is not None and bearer != expected:
            shown = bearer[:3] + "*" * 4 + bearer[-4:] if len(bearer) > 8 else "*" * len(bearer)
            raise APIError(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )


async def _drop(scope: Scope, receive: Receive) -> None:
    """Close the connection without any HTTP answer (an emulated outage)."""
    drop = scope.get("state", {}).get(DROP_CONNECTION)
    if drop is None:
        # In process (httpx2.ASGITransport): raise what httpx raises for a connection closed
        # without an answer, so the SDK retries and reports APIConnectionError as over TCP.
        raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
    drop()
    with anyio.move_on_after(5):
        while (await receive())["type"] != "http.disconnect":
            pass

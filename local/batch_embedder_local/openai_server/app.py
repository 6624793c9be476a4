"""The emulator's HTTP layer: a Starlette ASGI app (served by uvicorn, see :mod:`.server`).

Routes, with OpenAI's shapes (``openai.types``) and error wording (:mod:`.errors`):

- OpenAI, under ``/v1`` (``Authorization: Bearer KEY``): ``POST /embeddings``;
  ``POST|GET /files``, ``GET|DELETE /files/{id}``, ``GET /files/{id}/content``;
  ``POST|GET /batches``, ``GET /batches/{id}``, ``POST /batches/{id}/cancel``;
  ``GET /models``, ``GET /models/{id}``.
- Azure OpenAI, under ``/openai`` with ``?api-version=...`` (``api-key: KEY`` header, or
  ``Authorization: Bearer TOKEN`` for Entra ID), as ``openai.AzureOpenAI`` sends them
  (https://learn.microsoft.com/azure/ai-foundry/openai/reference):
  ``POST /deployments/{deployment}/embeddings`` (the deployment picks the model through
  ``EmulatorConfig.azure_deployments``) and the same files / batches / models routes.
- Admin, under ``/_emulator`` (no auth, they answer during an outage too): ``GET|POST
  /config``, ``POST /reset``, ``GET /stats`` (keys: :mod:`.stats`), ``GET /webhooks``
  (:mod:`.webhooks`), ``GET /health``.

Every answer carries ``x-request-id``; API answers also carry ``x-ratelimit-*``,
``openai-processing-ms`` and ``openai-version``. Uploads are parsed by python-multipart
(``request.form()``); CPU-bound work runs in Starlette's thread pool.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from openai.types import FileDeleted, Model
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from .api_handlers import embeddings_response, page, query_int, store_upload
from .batches import BatchManager
from .embeddings import MODELS
from .errors import APIError, AzureError, model_not_found
from .gate import AZURE_NOT_FOUND, DROP_CONNECTION, Gate, error_response, json_response
from .store import FileStore, StoredFile

if TYPE_CHECKING:
    from .server import OpenAIEmulator

__all__ = ["DROP_CONNECTION", "build_app"]

#: Embeddings requests up to this body size (bytes) for a feature-hashed model are answered
#: on the event loop (well under a millisecond of work); larger ones, and registered model
#: backends, go to the thread pool, so they overlap.
INLINE_BODY_BYTES = 4096
#: Largest JSON request body, bytes (2,048 x 8,192 tokens as token arrays is ~100 MB).
MAX_JSON_BODY_BYTES = 128 * 1024 * 1024
AZURE_DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again."
)


class _Routes:
    """Endpoints of one emulator (bound methods, so they reach its state)."""

    def __init__(self, emu: OpenAIEmulator) -> None:
        self.emu = emu

    @property
    def files(self) -> FileStore:
        assert self.emu.files is not None
        return self.emu.files

    @property
    def batches(self) -> BatchManager:
        assert self.emu.batches is not None
        return self.emu.batches

    @staticmethod
    async def _body_json(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_JSON_BODY_BYTES:
            raise APIError(413, "Request body too large.")
        try:
            return json.loads(raw)
        except ValueError:
            raise APIError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            ) from None

    def _deployments(self, request: Request) -> dict[str, str] | None:
        if not request.url.path.startswith("/openai/"):
            return None
        return dict(self.emu.current_config().azure_deployments)

    # --- embeddings ----------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        body = await self._body_json(request)
        deployment = request.path_params.get("deployment")
        if deployment is not None:
            model = self.emu.current_config().azure_deployments.get(deployment, deployment)
            if model not in MODELS:
                raise AzureError(404, AZURE_DEPLOYMENT_NOT_FOUND, code="DeploymentNotFound")
            if isinstance(body, dict):
                body = {**body, "model": model}
        name = body.get("model") if isinstance(body, dict) else None
        info = MODELS.get(name) if isinstance(name, str) else None
        hashed = info is None or info.embed is None
        if hashed and len(await request.body()) <= INLINE_BODY_BYTES:
            text, model_name = embeddings_response(self.emu, body)
        else:
            text, model_name = await run_in_threadpool(embeddings_response, self.emu, body)
        return Response(text, media_type="application/json", headers={"openai-model": model_name})

    # --- files ---------------------------------------------------------------------------

    async def files_create(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise APIError(
                400, "Invalid Content-Type header (expected multipart/form-data).", param="file"
            )
        try:
            async with request.form(max_files=4, max_fields=64) as form:
                upload = form.get("file")
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                stored = await run_in_threadpool(
                    store_upload,
                    self.files,
                    self.emu.current_config(),
                    fields,
                    upload if isinstance(upload, UploadFile) else None,
                )
        except HTTPException as exc:  # python-multipart's error, as Starlette reports it
            raise APIError(400, f"Could not parse multipart form: {exc.detail}") from None
        return json_response(stored.to_json())

    async def files_list(self, request: Request) -> Response:
        query = request.query_params
        limit = query_int(query.get("limit"), "limit", 10000, 1, 10000)
        items = [f.to_json() for f in self.files.list_files(query.get("purpose"))]
        if query.get("order", "desc") == "asc":
            items.reverse()
        return json_response(page(items, query.get("after"), limit))

    def _stored(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise APIError(404, f"No such File object: {file_id}", param="id")
        return stored

    async def file_get(self, request: Request) -> Response:
        return json_response(self._stored(request.path_params["file_id"]).to_json())

    async def file_delete(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if not self.files.delete(file_id):
            raise APIError(404, f"No such File object: {file_id}", param="id")
        return json_response(
            FileDeleted(id=file_id, object="file", deleted=True).model_dump(mode="json")
        )

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        stored = self._stored(file_id)
        if not stored.path.exists():
            raise APIError(404, f"No such File object: {file_id}", param="id")
        return FileResponse(
            stored.path,
            media_type="application/octet-stream",
            filename=stored.filename,
            content_disposition_type="attachment",
        )

    # --- batches -------------------------------------------------------------------------

    async def batches_create(self, request: Request) -> Response:
        params = await self._body_json(request)
        deployments = self._deployments(request)
        batch = self.batches.create(params, deployments=deployments, azure=deployments is not None)
        return json_response(batch.to_json())

    async def batches_list(self, request: Request) -> Response:
        query = request.query_params
        limit = query_int(query.get("limit"), "limit", 20, 1, 100)
        items = [b.to_json() for b in self.batches.list_batches()]
        return json_response(page(items, query.get("after"), limit))

    async def batch_get(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            raise APIError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return json_response(batch.to_json())

    async def batch_cancel(self, request: Request) -> Response:
        return json_response(self.batches.cancel(request.path_params["batch_id"]).to_json())

    # --- models --------------------------------------------------------------------------

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        info = MODELS[name]
        model = Model(id=name, object="model", created=info.created, owned_by=info.owned_by)
        return model.model_dump(mode="json", exclude_none=True)

    async def models_list(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [self._model(m) for m in MODELS]})

    async def model_get(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in MODELS:
            raise model_not_found(name)
        return json_response(self._model(name))

    # --- admin ---------------------------------------------------------------------------

    async def config_get(self, request: Request) -> Response:
        return json_response(self.emu.current_config().model_dump())

    async def config_post(self, request: Request) -> Response:
        changes = await self._body_json(request)
        if not isinstance(changes, dict):
            raise APIError(400, "Expected a JSON object of config fields.")
        try:
            new = self.emu.update_config(**changes)
        except ValidationError as exc:
            raise APIError(400, f"Invalid emulator config: {exc}") from None
        return json_response(new.model_dump())

    async def reset(self, request: Request) -> Response:
        await run_in_threadpool(self.emu.reset)
        return json_response({"reset": True})

    async def stats(self, request: Request) -> Response:
        return json_response(self.emu.stats())

    async def webhooks(self, request: Request) -> Response:
        return json_response({"object": "list", "data": self.emu.webhook_deliveries})

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    def api_routes(self) -> list[BaseRoute]:
        """The routes shared by ``/v1`` and ``/openai``."""
        return [
            Route("/embeddings", self.embeddings, methods=["POST"]),
            Route("/files", self.files_create, methods=["POST"]),
            Route("/files", self.files_list, methods=["GET"]),
            Route("/files/{file_id}", self.file_get, methods=["GET"]),
            Route("/files/{file_id}", self.file_delete, methods=["DELETE"]),
            Route("/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/batches", self.batches_create, methods=["POST"]),
            Route("/batches", self.batches_list, methods=["GET"]),
            Route("/batches/{batch_id}", self.batch_get, methods=["GET"]),
            Route("/batches/{batch_id}/cancel", self.batch_cancel, methods=["POST"]),
            Route("/models", self.models_list, methods=["GET"]),
            Route("/models/{model}", self.model_get, methods=["GET"]),
        ]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unrouted URL or method: OpenAI's "Invalid URL", Azure's "Resource not found"."""
    if request.url.path.startswith("/openai/"):
        return error_response(AzureError(404, AZURE_NOT_FOUND, code="404"))
    return error_response(APIError(404, f"Invalid URL ({request.method} {request.url.path})"))


def build_app(emu: OpenAIEmulator) -> ASGIApp:
    """The ASGI app of ``emu`` (its files and batches must be open: ``emu.open()``).

    Serve it with uvicorn (:meth:`.server.OpenAIEmulator.start`) or call it in process
    through ``httpx2.ASGITransport`` (:meth:`.server.OpenAIEmulator.asgi_app`).
    """
    routes = _Routes(emu)
    api = routes.api_routes()
    azure = [Route("/deployments/{deployment}/embeddings", routes.embeddings, methods=["POST"])]
    admin = [
        Route("/config", routes.config_get, methods=["GET"]),
        Route("/config", routes.config_post, methods=["POST"]),
        Route("/reset", routes.reset, methods=["POST"]),
        Route("/stats", routes.stats, methods=["GET"]),
        Route("/webhooks", routes.webhooks, methods=["GET"]),
        Route("/health", routes.health, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        APIError: _api_error,
        HTTPException: _http_error,
    }
    app = Starlette(
        routes=[
            Mount("/v1", routes=api),
            Mount("/openai", routes=azure + api),
            Mount("/_emulator", routes=admin),
        ],
        exception_handlers=handlers,
    )
    app.router.redirect_slashes = False
    return Gate(emu, app)

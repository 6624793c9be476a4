"""A project-owned, OpenAI-compatible HTTP server on 127.0.0.1 (dev only, never deployed).

It emulates the slice of the OpenAI API this project uses, following the contract in
``docs/openai-limits.md``: ``/v1/embeddings``, ``/v1/files``,
``/v1/batches`` (plus ``/v1/models``), with OpenAI's error shapes, ``x-ratelimit-*`` headers,
429s with ``retry-after``, and a batch lifecycle driven by background threads. The official
``openai`` SDK (3.54) talks to it unchanged through ``base_url``.

Embeddings are deterministic feature-hashing vectors (:mod:`.embeddings`), NOT OpenAI's.

Admin routes (no auth, outside ``/v1``): ``GET``/``POST /_emulator/config``,
``POST /_emulator/reset``, ``GET /_emulator/stats``, ``GET /_emulator/health``,
``GET /_emulator/webhooks`` (the batch-webhook delivery log, see :mod:`.webhooks`). The
keys of ``/_emulator/stats`` are listed in :mod:`.stats`; outages and random errors are
in :mod:`.faults`.

Built on ``http.server.ThreadingHTTPServer`` only: one thread per connection, HTTP/1.1
keep-alive (the SDK's httpx2 pool reuses connections).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from .batches import BatchManager
from .config import EmulatorConfig
from .embedding_api import parse_embedding_body, render_embedding_response
from .embeddings import MODELS
from .errors import APIError, invalid_value, new_id
from .faults import Faults, form_expires_after
from .multipart import (
    BodyTooLarge,
    MultipartError,
    Part,
    iter_body,
    parse_multipart_stream,
    read_body,
)
from .ratelimit import RateLimiter, format_duration, retry_after_headers
from .stats import Stats
from .store import UPLOAD_PURPOSES, FileStore, StoredFile
from .webhooks import WebhookSender

__all__ = ["OpenAIEmulator", "main"]

#: Largest JSON request body read into memory, bytes (a 2,048 x 8,192-token request given
#: as token arrays is ~100 MB of JSON at worst).
MAX_JSON_BODY_BYTES = 128 * 1024 * 1024
MB = 1024 * 1024
#: Owner shown in the /v1/models list.
MODEL_OWNER = "system"
MODEL_CREATED = {
    "text-embedding-3-small": 1705948997,
    "text-embedding-3-large": 1705953180,
    "text-embedding-ada-002": 1671217299,
}


class OpenAIEmulator:
    """The emulator: an HTTP server plus its state (files, batches, limits, counters).

    Args:
        config: behaviour and limits; defaults to ``EmulatorConfig()``. Kept as the
            "initial" config that :meth:`reset` returns to.
        host: interface to bind; keep ``127.0.0.1`` (the emulator has no real security).
        port: TCP port; 0 picks a free one (read it back from :attr:`port` after start).
        data_dir: where file contents are stored (``files/`` and ``tmp/`` under it, both
            emptied on start: file metadata is in memory only). Default: a temporary
            directory that :meth:`stop` removes. A given directory is left in place.
        verbose: log every request to stderr.

    Use as ``with OpenAIEmulator() as emu: OpenAI(base_url=emu.base_url, api_key="x")``.

    Limits and their sources are documented on :class:`EmulatorConfig`; times are seconds,
    sizes bytes, token counts cl100k_base tokens.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        self._initial_config = (config or EmulatorConfig()).model_copy(deep=True)
        self._config = self._initial_config.model_copy(deep=True)
        self._config_lock = threading.Lock()
        self.host = host
        self._requested_port = port
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._tmp_dir: Path | None = None
        self.verbose = verbose
        self.counters = Stats()
        self.faults = Faults(self.counters)
        self.faults.configure(self._config, EmulatorConfig.model_fields)
        self.limiter = RateLimiter()
        self.files: FileStore | None = None
        self.batches: BatchManager | None = None
        self.webhooks = WebhookSender(lambda: self.config, self.faults.outage_left)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIEmulator:
        """Bind, then serve in a daemon thread. Returns ``self``."""
        if self._server is not None:
            return self
        if self._data_dir_arg is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="openai-emulator-"))
            root = self._tmp_dir
        else:
            root = self._data_dir_arg
            root.mkdir(parents=True, exist_ok=True)
        self.files = FileStore(root)
        self.batches = BatchManager(
            self.files, lambda: self.config, self.counters, self.webhooks.batch_finished
        )
        server = _Server((self.host, self._requested_port), _Handler)
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="openai-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, stop running batches, remove the temporary data dir (if any)."""
        if self._server is None:
            return
        if self.batches is not None:
            self.batches.clear(timeout=10.0)
        self.webhooks.stop()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def __enter__(self) -> OpenAIEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (the requested one before :meth:`start`)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (admin routes live under it)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: pass it as the SDK's ``base_url`` / ``OPENAI_BASE_URL``."""
        return f"{self.url}/v1"

    @property
    def data_dir(self) -> Path | None:
        """Where file contents live (None before :meth:`start` when it is temporary)."""
        return self.files.root if self.files is not None else self._data_dir_arg

    # --- in-process admin ------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        """A copy of the current config (change it with :meth:`update_config`)."""
        with self._config_lock:
            return self._config.model_copy(deep=True)

    def update_config(self, **changes: Any) -> EmulatorConfig:
        """Merge ``changes`` into the config (validated); returns the new config.

        Setting ``outage_seconds`` (re)starts the outage clock from now; setting
        ``error_seed`` / ``error_rate_*`` re-seeds the random errors (:mod:`.faults`).

        Raises:
            pydantic.ValidationError: unknown field or invalid value.
        """
        with self._config_lock:
            merged = {**self._config.model_dump(), **changes}
            self._config = EmulatorConfig.model_validate(merged)
            self.faults.configure(self._config, changes)
            return self._config.model_copy(deep=True)

    def _take_fault(self, name: str) -> bool:
        """Consume one unit of a ``fail_next_*`` counter; True if one was left."""
        with self._config_lock:
            left = getattr(self._config, name)
            if left <= 0:
                return False
            self._config = self._config.model_copy(update={name: left - 1})
            return True

    def stats(self) -> dict[str, int | float]:
        """Counters, as served at ``GET /_emulator/stats`` (keys: :mod:`.stats`)."""
        files = self.files.count() if self.files else 0
        return self.counters.snapshot(files, self.faults.outage_left())

    @property
    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Copy of the webhook delivery log, oldest first: one dict per attempt, plus one per
        dropped / unsent event (shape in :mod:`.webhooks`); ``GET /_emulator/webhooks``."""
        return self.webhooks.deliveries

    def wait_for_webhooks(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until the delivery log has at least ``n`` entries; return a copy of it.

        Raises:
            TimeoutError: not enough entries after ``timeout`` seconds.
        """
        return self.webhooks.wait_for(n, timeout)

    def reset(self) -> None:
        """Forget files, batches, counters, webhook log / pending deliveries and the
        rate-limit window; restore the config (an initial ``outage_seconds`` restarts)."""
        with self._config_lock:
            self._config = self._initial_config.model_copy(deep=True)
            self.faults.configure(self._config, EmulatorConfig.model_fields)
        if self.batches is not None:
            self.batches.clear()
        self.webhooks.clear()
        if self.files is not None:
            self.files.clear()
        self.counters.reset()
        self.limiter.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: OpenAIEmulator


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _query_int(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name, [None])[0]
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(
            400, f"Invalid value for '{name}': expected an integer.", param=name
        ) from None
    if not lo <= value <= hi:
        raise APIError(
            400,
            f"Invalid '{name}': integer out of range. Expected a value between {lo} and {hi}, "
            f"but got {value} instead.",
            param=name,
            code="integer_out_of_range",
        )
    return value


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-emulator/1"
    # Headers and body go out in separate writes; without TCP_NODELAY the body waits for
    # the client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True
    server: _Server
    _request_id: str
    _t0: float
    _body_read: bool
    _is_api: bool

    # --- plumbing --------------------------------------------------------------------------

    @property
    def emu(self) -> OpenAIEmulator:
        return self.server.emulator

    def log_message(self, format: str, *args: Any) -> None:
        if self.emu.verbose:
            sys.stderr.write(f"[openai-emulator] {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        return int(raw) if raw and raw.strip().isdigit() else None

    def _chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def _drain(self) -> None:
        """Read and drop an unread request body, so keep-alive stays in sync."""
        if self._body_read:
            return
        self._body_read = True
        for _ in iter_body(self.rfile, self._content_length(), self._chunked()):
            pass

    def _read_body(self) -> bytes:
        self._body_read = True
        try:
            return read_body(
                self.rfile, self._content_length(), self._chunked(), MAX_JSON_BODY_BYTES
            )
        except BodyTooLarge:
            raise APIError(413, "Request body too large.") from None

    def _read_json(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw)
        except ValueError:
            raise APIError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            ) from None

    def _base_headers(self) -> dict[str, str]:
        headers = {"x-request-id": self._request_id}
        if self._is_api:
            cfg = self.emu.config
            state = self.emu.limiter.state(cfg.rpm_limit, cfg.tpm_limit, cfg.remaining_override)
            headers.update(state.headers())
            headers["openai-processing-ms"] = str(int((time.monotonic() - self._t0) * 1000))
            headers["openai-version"] = "2020-10-01"
        return headers

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._drain()
        self.send_response(status)
        all_headers = {**self._base_headers(), **(headers or {})}
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in all_headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, _json_bytes(obj), headers=headers)

    def _dispatch(self, method: str) -> None:
        self._request_id = new_id("req_")
        self._t0 = time.monotonic()
        self._body_read = False
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query)
        self._is_api = path.startswith("/v1/")
        try:
            if path.startswith("/_emulator/"):
                self._admin(method, path)
            elif self._is_api:
                self.emu.counters.add(api_requests=1)
                if self.emu.faults.refuse():  # outage: close without any answer
                    self.close_connection = True
                    return
                self._check_auth()
                self._api(method, path, query)
            else:
                raise APIError(404, f"Invalid URL ({method} {split.path})")
        except APIError as exc:
            if exc.status == 401:
                self.emu.counters.add(unauthorized=1)
            self._send_json(exc.status, exc.body(), exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(
                    500,
                    {
                        "error": {
                            "message": "The local emulator failed on this request (see its "
                            "stderr).",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    },
                )

    def _check_auth(self) -> None:
        auth = self.headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys.",
            )
        expected = self.emu.config.api_key
        if expected is not None and key != expected:
            shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
            raise APIError(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    # --- routing ---------------------------------------------------------------------------

    def _api(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        parts = [unquote(p) for p in path.split("/")[2:]]  # after "/v1"
        route = (method, parts[0] if parts else "", len(parts))
        if route == ("POST", "embeddings", 1):
            return self._embeddings()
        if parts and parts[0] == "files":
            if route == ("POST", "files", 1):
                return self._files_create()
            if route == ("GET", "files", 1):
                return self._files_list(query)
            if route == ("GET", "files", 2):
                return self._send_json(200, self._get_file(parts[1]).to_json())
            if route == ("DELETE", "files", 2):
                return self._files_delete(parts[1])
            if route == ("GET", "files", 3) and parts[2] == "content":
                return self._files_content(parts[1])
        if parts and parts[0] == "batches":
            assert self.emu.batches is not None
            if route == ("POST", "batches", 1):
                batch = self.emu.batches.create(self._read_json())
                return self._send_json(200, batch.to_json())
            if route == ("GET", "batches", 1):
                return self._batches_list(query)
            if route == ("GET", "batches", 2):
                return self._send_json(200, self._get_batch(parts[1]).to_json())
            if route == ("POST", "batches", 3) and parts[2] == "cancel":
                return self._send_json(200, self.emu.batches.cancel(parts[1]).to_json())
        if parts and parts[0] == "models":
            if route == ("GET", "models", 1):
                data = [self._model_json(m) for m in MODELS]
                return self._send_json(200, {"object": "list", "data": data})
            if route == ("GET", "models", 2):
                if parts[1] not in MODELS:
                    raise APIError(
                        404,
                        f"The model `{parts[1]}` does not exist or you do not have access to it.",
                        code="model_not_found",
                    )
                return self._send_json(200, self._model_json(parts[1]))
        raise APIError(404, f"Invalid URL ({method} {self.path.split('?')[0]})")

    @staticmethod
    def _model_json(name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": MODEL_CREATED[name],
            "owned_by": MODEL_OWNER,
        }

    # --- embeddings ------------------------------------------------------------------------

    def _embeddings(self) -> None:
        emu = self.emu
        body = self._read_json()
        cfg = emu.config
        model = body.get("model") if isinstance(body, dict) else None
        model_name = model if isinstance(model, str) else "text-embedding-3-small"
        emu.faults.check_embeddings(cfg, model_name, emu._take_fault)
        req = parse_embedding_body(body, cfg)
        req.count_tokens()
        req.check_token_limits(cfg)
        total = req.total_tokens
        refused = emu.limiter.acquire(total, cfg.rpm_limit, cfg.tpm_limit)
        if refused is not None:
            emu.counters.add(rate_limited=1)
            unit = (
                "requests per min (RPM)" if refused.kind == "requests" else ("tokens per min (TPM)")
            )
            if refused.retry_after is None:
                raise APIError(
                    429,
                    f"Request too large for {req.model.name} in organization "
                    f"org-local-emulator on {unit}: Limit {refused.limit}, Requested "
                    f"{refused.requested}. The input or output tokens must be reduced in "
                    "order to run successfully. Visit https://platform.openai.com/account/"
                    "rate-limits to learn more.",
                    type_=refused.kind,
                    code="rate_limit_exceeded",
                )
            raise APIError(
                429,
                f"Rate limit reached for {req.model.name} in organization org-local-emulator "
                f"on {unit}: Limit {refused.limit}, Used {refused.used}, Requested "
                f"{refused.requested}. Please try again in "
                f"{format_duration(refused.retry_after)}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                type_=refused.kind,
                code="rate_limit_exceeded",
                headers=retry_after_headers(refused.retry_after),
            )
        text = render_embedding_response(req)
        emu.counters.add(sync_requests=1, embedding_inputs=len(req.texts), sync_billed_tokens=total)
        self._send_bytes(200, text.encode("utf-8"), headers={"openai-model": req.model.name})

    # --- files -----------------------------------------------------------------------------

    def _get_file(self, file_id: str) -> Any:
        assert self.emu.files is not None
        stored = self.emu.files.get(file_id)
        if stored is None:
            raise APIError(404, f"No such File object: {file_id}", param="id")
        return stored

    def _files_create(self) -> None:
        files = self.emu.files
        assert files is not None
        cfg = self.emu.config
        ctype = self.headers.get("Content-Type") or ""
        if not ctype.lower().startswith("multipart/form-data"):
            raise APIError(
                400,
                "Invalid Content-Type header (expected multipart/form-data).",
                param="file",
            )
        self._body_read = True
        try:
            parts = parse_multipart_stream(
                iter_body(self.rfile, self._content_length(), self._chunked()),
                ctype,
                lambda: files.new_tmp_path(".upload"),
                cfg.max_file_bytes,
            )
        except MultipartError as exc:
            raise APIError(400, f"Could not parse multipart form: {exc}") from None
        try:
            stored = self._store_upload(parts, cfg)
        finally:
            for part in parts.values():
                if part.path is not None:
                    part.path.unlink(missing_ok=True)
        self._send_json(200, stored.to_json())

    def _store_upload(self, parts: dict[str, Part], cfg: EmulatorConfig) -> StoredFile:
        """Check the parsed form and adopt the uploaded file into the store."""
        files = self.emu.files
        assert files is not None
        purpose_part = parts.get("purpose")
        file_part = parts.get("file")
        if purpose_part is None:
            raise APIError(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if file_part is None or file_part.path is None:
            raise APIError(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        purpose = purpose_part.value.decode("utf-8", "replace").strip()
        if purpose not in UPLOAD_PURPOSES:
            raise invalid_value("purpose", purpose, UPLOAD_PURPOSES)
        filename = file_part.filename or "upload"
        limit = cfg.max_batch_file_bytes if purpose == "batch" else cfg.max_file_bytes
        if file_part.size > limit:
            raise APIError(
                400,
                f"File is too large ({file_part.size} bytes). The maximum size for purpose "
                f"'{purpose}' is {limit} bytes.",
                param="file",
                code="file_too_large",
            )
        if purpose == "batch" and not filename.lower().endswith(".jsonl"):
            raise APIError(
                400,
                "Invalid file format for Batch API. Must be .jsonl",
                param="file",
                code="invalid_file_format",
            )
        expiry = form_expires_after(parts, cfg)
        return files.adopt(file_part.path, filename, purpose, expiry)

    def _files_list(self, query: dict[str, list[str]]) -> None:
        assert self.emu.files is not None
        purpose = query.get("purpose", [None])[0]
        limit = _query_int(query, "limit", 10000, 1, 10000)
        order = query.get("order", ["desc"])[0]
        items = [f.to_json() for f in self.emu.files.list_files(purpose)]
        if order == "asc":
            items.reverse()
        self._send_json(200, _page(items, query.get("after", [None])[0], limit))

    def _files_delete(self, file_id: str) -> None:
        assert self.emu.files is not None
        if not self.emu.files.delete(file_id):
            raise APIError(404, f"No such File object: {file_id}", param="id")
        self._send_json(200, {"id": file_id, "object": "file", "deleted": True})

    def _files_content(self, file_id: str) -> None:
        stored = self._get_file(file_id)
        self._drain()
        try:
            fh = stored.path.open("rb")
        except FileNotFoundError:
            raise APIError(404, f"No such File object: {file_id}", param="id") from None
        with fh:
            size = stored.path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", f'attachment; filename="{stored.filename}"')
            for k, v in self._base_headers().items():
                self.send_header(k, v)
            self.end_headers()
            shutil.copyfileobj(fh, self.wfile, MB)

    # --- batches ---------------------------------------------------------------------------

    def _get_batch(self, batch_id: str) -> Any:
        assert self.emu.batches is not None
        batch = self.emu.batches.get(batch_id)
        if batch is None:
            raise APIError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    def _batches_list(self, query: dict[str, list[str]]) -> None:
        assert self.emu.batches is not None
        limit = _query_int(query, "limit", 20, 1, 100)
        items = [b.to_json() for b in self.emu.batches.list_batches()]
        self._send_json(200, _page(items, query.get("after", [None])[0], limit))

    # --- admin -----------------------------------------------------------------------------

    def _admin(self, method: str, path: str) -> None:
        """The ``/_emulator/*`` routes (no auth; they answer during an outage too).
        ``GET /_emulator/stats`` keys and units: :mod:`.stats`."""
        emu = self.emu
        if (method, path) == ("GET", "/_emulator/config"):
            return self._send_json(200, emu.config.model_dump())
        if (method, path) == ("POST", "/_emulator/config"):
            changes = self._read_json()
            if not isinstance(changes, dict):
                raise APIError(400, "Expected a JSON object of config fields.")
            try:
                new = emu.update_config(**changes)
            except ValidationError as exc:
                raise APIError(400, f"Invalid emulator config: {exc}") from None
            return self._send_json(200, new.model_dump())
        if (method, path) == ("POST", "/_emulator/reset"):
            self._drain()
            emu.reset()
            return self._send_json(200, {"reset": True})
        if (method, path) == ("GET", "/_emulator/stats"):
            return self._send_json(200, emu.stats())
        if (method, path) == ("GET", "/_emulator/webhooks"):
            return self._send_json(200, {"object": "list", "data": emu.webhook_deliveries})
        if (method, path) == ("GET", "/_emulator/health"):
            return self._send_json(200, {"status": "ok"})
        raise APIError(404, f"Invalid URL ({method} {path})")


# --- CLI ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m batch_embedder_local.openai_server``."""
    p = argparse.ArgumentParser(
        prog="python -m batch_embedder_local.openai_server",
        description="Local OpenAI-compatible server (embeddings, files, batches). Dev only: "
        "its vectors are deterministic stand-ins, not OpenAI's.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 = any free port")
    p.add_argument("--data-dir", type=Path, help="keep file contents here (default: temp dir)")
    p.add_argument("--api-key", help="accept only this Bearer key (default: any key)")
    p.add_argument(
        "--batch-seconds",
        type=float,
        help="duration of a batch's in_progress phase, seconds (on top of the work)",
    )
    p.add_argument("--validating-seconds", type=float, help="validating phase, seconds")
    p.add_argument("--finalizing-seconds", type=float, help="finalizing phase, seconds")
    p.add_argument("--cancel-seconds", type=float, help="cancelling -> cancelled, seconds")
    p.add_argument(
        "--batch-outcome",
        choices=["completed", "expired", "cancelled", "failed"],
        help="how batches end",
    )
    p.add_argument(
        "--expire-fraction", type=float, help="share (0..1) done when a batch expires/cancels"
    )
    p.add_argument(
        "--outage-seconds", type=float, help="refuse every /v1 request for this many seconds"
    )
    p.add_argument("--fail-custom-id-pattern", help="regex: matching batch requests fail (500)")
    p.add_argument("--rpm", type=int, help="requests per minute (0 = unlimited)")
    p.add_argument("--tpm", type=int, help="tokens per minute (0 = unlimited)")
    p.add_argument("--no-shuffle", action="store_true", help="keep batch output in input order")
    p.add_argument(
        "--config",
        help="JSON object (or @path to a JSON file) of EmulatorConfig fields, applied first",
    )
    p.add_argument("--verbose", action="store_true", help="log requests to stderr")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the config: ``--config`` JSON first, then the individual flags."""
    data: dict[str, Any] = {}
    if args.config:
        text = args.config
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        data.update(json.loads(text))
    flags = {
        "api_key": args.api_key,
        "batch_in_progress_seconds": args.batch_seconds,
        "batch_validating_seconds": args.validating_seconds,
        "batch_finalizing_seconds": args.finalizing_seconds,
        "batch_cancel_seconds": args.cancel_seconds,
        "batch_outcome": args.batch_outcome,
        "expire_completed_fraction": args.expire_fraction,
        "outage_seconds": args.outage_seconds,
        "fail_custom_id_pattern": args.fail_custom_id_pattern,
        "rpm_limit": args.rpm,
        "tpm_limit": args.tpm,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.no_shuffle:
        data["shuffle_output"] = False
    return EmulatorConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGINT/SIGTERM.

    Prints exactly one line to stdout once it accepts connections:
    ``listening on http://127.0.0.1:PORT/v1``. Returns the exit code (0; 2 on bad args).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    emulator = OpenAIEmulator(config, host=args.host, port=args.port, data_dir=args.data_dir)
    emulator.verbose = args.verbose
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
    emulator.start()
    try:
        print(f"listening on {emulator.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0

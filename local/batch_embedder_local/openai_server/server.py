"""The OpenAI emulator: state plus a uvicorn server on 127.0.0.1 (dev only, never deployed).

It emulates the slice of the OpenAI API this project uses, following the contract in
``docs/openai-limits.md``: ``/v1/embeddings``, ``/v1/files``, ``/v1/batches`` (plus
``/v1/models``), and the same service in Azure OpenAI's URL shapes under ``/openai``, with
OpenAI's error shapes, ``x-ratelimit-*`` headers, 429s with ``retry-after``, and a batch
lifecycle driven by background threads. The official ``openai`` SDK talks to it unchanged
through ``base_url`` (``OpenAI``) or ``azure_endpoint`` (``AzureOpenAI``).

The HTTP layer is the Starlette app of :mod:`.app`, served by uvicorn (h11) in a daemon
thread, or called in process through ``httpx2.ASGITransport(app=emu.asgi_app())``.
Embeddings are deterministic feature-hashing vectors (:mod:`.embeddings`), NOT OpenAI's,
unless a model backend was registered (:func:`.embeddings.register_model`).

Admin routes (no auth, outside ``/v1``): see :mod:`.app`; the keys of
``/_emulator/stats`` are listed in :mod:`.stats`; outages and random errors are in
:mod:`.faults`.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import DROP_CONNECTION, build_app
from .batches import BatchManager
from .cli import build_parser, config_from_args, main
from .config import EmulatorConfig
from .faults import Faults
from .ratelimit import RateLimiter
from .stats import Stats
from .store import FileStore
from .webhooks import WebhookSender

__all__ = ["OpenAIEmulator", "build_parser", "config_from_args", "main"]

#: Seconds an idle keep-alive connection stays open (the SDK's pool reuses connections).
KEEP_ALIVE_SECONDS = 600
#: Seconds :meth:`OpenAIEmulator.start` waits for uvicorn to listen.
STARTUP_TIMEOUT_SECONDS = 10.0


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a per-connection ``abort`` in ``scope["state"]`` so an
    emulated outage can close the connection without an HTTP answer (:mod:`.app`), and
    ``TCP_NODELAY`` (headers and body go out in separate writes; without it the body waits
    for the client's delayed ACK, ~40 ms per request)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self.app_state = {**self.app_state, DROP_CONNECTION: transport.abort}


class OpenAIEmulator:
    """The emulator: a uvicorn-served Starlette app plus its state (files, batches, limits,
    counters).

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
        self.webhooks = WebhookSender(self.current_config, self.faults.outage_left)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._port = port
        self._app: ASGIApp | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> OpenAIEmulator:
        """Create the file store and batch manager (no socket). Idempotent; returns ``self``.

        Enough for in-process use through :meth:`asgi_app`; :meth:`start` calls it.
        """
        if self.files is not None:
            return self
        if self._data_dir_arg is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="openai-emulator-"))
            root = self._tmp_dir
        else:
            root = self._data_dir_arg
            root.mkdir(parents=True, exist_ok=True)
        self.files = FileStore(root)
        self.batches = BatchManager(
            self.files, self.current_config, self.counters, self.webhooks.batch_finished
        )
        return self

    def asgi_app(self) -> ASGIApp:
        """The emulator's ASGI app (opening the state first), e.g. for
        ``httpx2.AsyncClient(transport=httpx2.ASGITransport(app=emu.asgi_app()))``.
        In process an emulated outage raises ``httpx2.RemoteProtocolError`` in the
        transport (the SDK reports ``APIConnectionError``) instead of closing a socket."""
        self.open()
        if self._app is None:
            self._app = build_app(self)
        return self._app

    def start(self) -> OpenAIEmulator:
        """Bind ``host:port``, then serve with uvicorn in a daemon thread. Returns ``self``.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: uvicorn did not start within 10 seconds.
        """
        if self._server is not None:
            return self
        app = self.asgi_app()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            http=_Protocol,
            ws="none",
            lifespan="off",
            log_config=LOGGING_CONFIG if self.verbose else None,
            log_level="info" if self.verbose else "warning",
            access_log=self.verbose,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="openai-emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("the OpenAI emulator (uvicorn) did not start")
            time.sleep(0.005)
        self._server, self._thread, self._sock = server, thread, sock
        return self

    def stop(self) -> None:
        """Stop serving, stop running batches, remove the temporary data dir (if any)."""
        if self.batches is not None:
            self.batches.clear(timeout=10.0)
        self.webhooks.stop()
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(5)
            if self._sock is not None:
                self._sock.close()
        self._server = self._thread = self._sock = None
        self._port = self._requested_port
        self.files = None
        self.batches = None
        self._app = None
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
        return self._port

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

    def current_config(self) -> EmulatorConfig:
        """The current config itself, not a copy: read it, never change it (the request
        path reads it several times per request; :attr:`config` deep-copies). Every change
        replaces the object, so a reference taken here stays consistent."""
        with self._config_lock:
            return self._config

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

    def take_fault(self, name: str) -> bool:
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

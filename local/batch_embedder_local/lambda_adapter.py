"""Run the real ``functions/<step>/app.py`` handlers in-process when moto invokes a Lambda.

Without Docker, moto cannot run function code. With ``{"lambda": {"use_docker": False}}``
moto's ``LambdaSimpleBackend.invoke`` answers every invoke (API calls and Step Functions
Task states); this adapter replaces that one method. It is a moto internal (moto is pinned
in pyproject.toml); :func:`check_moto_hooks` fails loudly if an upgrade moves it.

A handler's exception comes back as ``{"errorType", "errorMessage", "stackTrace"}`` with the
``X-Amz-Function-Error`` header, as on AWS, so ``Retry``/``Catch`` on ``ErrorEquals`` match
the exception's class name.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


class AdapterError(RuntimeError):
    """moto's internals are not what the adapter was written against, or a function is unknown."""


def check_moto_hooks() -> None:
    """Fail loudly when the moto internals the local stack relies on have changed.

    Raises:
        AdapterError: ``LambdaSimpleBackend.invoke`` or ``DynamoHandler.call_action`` is
            gone or has a new signature.
    """
    try:
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.dynamodb.responses import DynamoHandler
    except ImportError as exc:  # pragma: no cover - depends on moto
        raise AdapterError(f"a moto module the local stack patches is gone: {exc}") from exc
    params = list(inspect.signature(LambdaSimpleBackend.invoke).parameters)
    expected = ["self", "function_name", "qualifier", "body", "headers", "response_headers"]
    if params != expected:
        raise AdapterError(
            f"LambdaSimpleBackend.invoke{tuple(params)} != {tuple(expected)}: "
            "update batch_embedder_local.lambda_adapter for this moto version"
        )
    if list(inspect.signature(DynamoHandler.call_action).parameters) != ["self"]:
        raise AdapterError("DynamoHandler.call_action changed: update the DynamoDB request lock")


#: moto's DynamoDB backend is not thread-safe: two concurrent conditional updates can both
#: pass their condition and lose one write (seen here: 29 of 32 racing reservations
#: "won" a 10-slot budget). DynamoDB itself applies each request atomically; one lock
#: around each moto DynamoDB request gives the local stack the same guarantee.
_DYNAMODB_LOCK = threading.Lock()


def install_dynamodb_request_lock() -> Callable[[], None]:
    """Serialise moto's DynamoDB requests (each applied atomically, as on AWS).

    Returns:
        A function that removes the lock again.
    """
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action
    if getattr(original, "_batch_embedder_locked", False):
        return lambda: None

    def call_action(self: Any) -> Any:
        with _DYNAMODB_LOCK:
            return original(self)

    call_action._batch_embedder_locked = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = call_action  # type: ignore[method-assign]

    def remove() -> None:
        DynamoHandler.call_action = original  # type: ignore[method-assign]

    return remove


@dataclass
class LocalFunction:
    """A function of template.yaml as the adapter runs it."""

    logical_id: str
    name: str
    arn: str
    code_dir: Path
    handler: str
    timeout_seconds: int
    memory_mb: int


class LocalContext:
    """The parts of the Lambda context object that Powertools and handlers read."""

    def __init__(self, fn: LocalFunction) -> None:
        self.function_name = fn.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = fn.arn
        self.memory_limit_in_mb = fn.memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{fn.name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + fn.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class LambdaAdapter:
    """Registry of local functions and the moto hook that invokes them."""

    functions: dict[str, LocalFunction] = field(default_factory=dict)
    invocations: list[tuple[str, float, bool]] = field(default_factory=list)
    _modules: dict[str, ModuleType] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _original: Any = None
    _gates: dict[str, threading.Event] = field(default_factory=dict)

    def hold(self, logical_id: str) -> threading.Event:
        """Hold every invocation of ``logical_id`` until the returned event is set.

        For tests that need an order AWS does not promise (a webhook that arrives before
        WaitForBatches stored its token): set the event to let the invocations run.
        """
        gate = threading.Event()
        self._gates[logical_id] = gate
        return gate

    def register(self, fn: LocalFunction) -> None:
        """Make ``fn`` invocable by name and by ARN."""
        self.functions[fn.name] = fn
        self.functions[fn.arn] = fn

    def _handler(self, fn: LocalFunction) -> Callable[[Any, Any], Any]:
        module_file, func_name = fn.handler.rsplit(".", 1)
        with self._lock:
            module = self._modules.get(fn.logical_id)
            if module is None:
                path = fn.code_dir / f"{module_file.replace('.', '/')}.py"
                spec = importlib.util.spec_from_file_location(f"_local_fn_{fn.logical_id}", path)
                if spec is None or spec.loader is None:
                    raise AdapterError(f"cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                self._modules[fn.logical_id] = module
        handler: Callable[[Any, Any], Any] = getattr(module, func_name)
        return handler

    def invoke(self, function_name: str, payload: bytes | str | None) -> tuple[bytes, bool]:
        """Run the handler of ``function_name`` (name or ARN) on ``payload`` (JSON).

        Returns:
            ``(response JSON bytes, errored)``.
        """
        name = (
            function_name.split(":function:")[-1]
            if function_name not in self.functions
            else function_name
        )
        fn = self.functions.get(function_name) or self.functions.get(name.split(":")[0])
        if fn is None:
            raise AdapterError(f"no local function {function_name!r}")
        gate = self._gates.get(fn.logical_id)
        if gate is not None:
            gate.wait(timeout=300)
            self._gates.pop(fn.logical_id, None)
        started = time.monotonic()
        try:
            event = json.loads(payload or "{}")
            result = self._handler(fn)(event, LocalContext(fn))
            body, errored = json.dumps(result).encode(), False
        except Exception as exc:
            body = json.dumps(
                {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "stackTrace": traceback.format_exception(exc),
                }
            ).encode()
            errored = True
        self.invocations.append((fn.logical_id, time.monotonic() - started, errored))
        return body, errored

    def install(self) -> None:
        """Patch moto's ``LambdaSimpleBackend.invoke`` to call :meth:`invoke`."""
        check_moto_hooks()
        from moto.awslambda_simple.models import LambdaSimpleBackend

        adapter = self
        self._original = LambdaSimpleBackend.invoke

        def invoke(
            backend: Any,
            function_name: str,
            qualifier: str | None,
            body: Any,
            headers: Any,
            response_headers: Any,
        ) -> bytes:
            result, errored = adapter.invoke(function_name, body)
            if errored:
                response_headers["x-amz-function-error"] = "Unhandled"
            return result

        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        """Put moto's own method back."""
        if self._original is not None:
            from moto.awslambda_simple.models import LambdaSimpleBackend

            LambdaSimpleBackend.invoke = self._original  # type: ignore[method-assign]
            self._original = None

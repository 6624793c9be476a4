"""Run the real ``functions/<step>/app.py`` handlers in-process when moto invokes a Lambda.

Without Docker, moto cannot run function code. With ``{"lambda": {"use_docker": False}}``
moto's ``LambdaSimpleBackend.invoke`` answers every invoke (API calls and Step Functions
Task states); this adapter replaces that one method. It is a moto internal (moto is pinned
in pyproject.toml); :func:`check_moto_hooks` fails loudly if an upgrade moves it.

A handler's exception comes back as ``{"errorType", "errorMessage", "stackTrace"}`` with the
``X-Amz-Function-Error`` header, as on AWS, so ``Retry``/``Catch`` on ``ErrorEquals`` match
the exception's class name.

Injected failures (:meth:`LambdaAdapter.crash_after`, :meth:`LambdaAdapter.fail_before`)
come back the same way with ``errorType`` ``Lambda.Unknown``, the name Step Functions gives
an invocation the Lambda service itself failed (runtime crash, sandbox lost), so
``Retry``/``Catch`` on ``Lambda.Unknown`` or ``States.ALL`` can be tested.
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

#: ``errorType`` of an injected failure (as Step Functions reports a failed invocation).
INJECTED_ERROR_TYPE = "Lambda.Unknown"
#: ``errorMessage`` of :meth:`LambdaAdapter.crash_after` failures.
CRASH_AFTER_MESSAGE = "The function ran, then the invocation failed (injected)"
#: ``errorMessage`` of :meth:`LambdaAdapter.fail_before` failures.
FAIL_BEFORE_MESSAGE = "The invocation failed before the function ran (injected)"


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
    _crash_after: dict[str, int] = field(default_factory=dict)
    _fail_before: dict[str, int] = field(default_factory=dict)
    _fault_lock: threading.Lock = field(default_factory=threading.Lock)

    def crash_after(self, logical_id: str, times: int = 1) -> None:
        """Make the next ``times`` invocations of ``logical_id`` fail AFTER doing the work.

        Each runs the real handler to completion (every side effect happens; what it
        returned or raised is discarded), then reports ``errorType`` ``Lambda.Unknown``,
        ``errorMessage`` :data:`CRASH_AFTER_MESSAGE`, as when the runtime dies after the work.
        Replaces any count left for that function; ``times=0`` cancels. Thread-safe.

        Raises:
            ValueError: ``times`` is negative.
        """
        self._set_fault(self._crash_after, logical_id, times)

    def fail_before(self, logical_id: str, times: int = 1) -> None:
        """Make the next ``times`` invocations of ``logical_id`` fail WITHOUT running it.

        Each reports ``errorType`` ``Lambda.Unknown``, ``errorMessage``
        :data:`FAIL_BEFORE_MESSAGE`; the handler is not called (no side effect). Checked
        before :meth:`crash_after`. Replaces any count left; ``times=0`` cancels. Thread-safe.

        Raises:
            ValueError: ``times`` is negative.
        """
        self._set_fault(self._fail_before, logical_id, times)

    def _set_fault(self, counts: dict[str, int], logical_id: str, times: int) -> None:
        if times < 0:
            raise ValueError(f"times must be >= 0, not {times}")
        with self._fault_lock:
            if times:
                counts[logical_id] = times
            else:
                counts.pop(logical_id, None)

    def _take_fault(self, counts: dict[str, int], logical_id: str) -> bool:
        """Consume one unit of an injected-failure count; True if one was left."""
        with self._fault_lock:
            left = counts.get(logical_id, 0)
            if left <= 0:
                return False
            if left == 1:
                del counts[logical_id]
            else:
                counts[logical_id] = left - 1
            return True

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
            ``(response JSON bytes, errored)``. Every call, injected failures included,
            is appended to :attr:`invocations` as ``(logical_id, seconds, errored)``.
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
        if self._take_fault(self._fail_before, fn.logical_id):
            body, errored = _injected_error(FAIL_BEFORE_MESSAGE), True
        else:
            crash = self._take_fault(self._crash_after, fn.logical_id)
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
            if crash:
                body, errored = _injected_error(CRASH_AFTER_MESSAGE), True
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

        # inspect.signature follows __wrapped__: check_moto_hooks sees moto's own method
        # even while a stack is installed.
        invoke.__wrapped__ = self._original  # type: ignore[attr-defined]
        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        """Put moto's own method back."""
        if self._original is not None:
            from moto.awslambda_simple.models import LambdaSimpleBackend

            LambdaSimpleBackend.invoke = self._original  # type: ignore[method-assign]
            self._original = None


def _injected_error(message: str) -> bytes:
    """The payload of an injected ``Lambda.Unknown`` failure."""
    return json.dumps(
        {"errorType": INJECTED_ERROR_TYPE, "errorMessage": message, "stackTrace": []}
    ).encode()

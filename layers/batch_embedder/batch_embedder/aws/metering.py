"""Count every AWS request the code makes and price it at list prices.

``instrument(client)`` hooks a boto3 client's botocore events; requests made while a
``with meter() as m:`` block is active in the current context are added to ``m`` (and to every
enclosing meter). Requests made outside any meter are not counted.

What is counted:

* Requests: one per HTTP attempt, retries included (AWS bills each request it receives),
  from botocore's ``before-send`` event, which fires once per attempt. Calls answered without
  sending (a ``before-call`` stub) are not counted.
* S3 (https://aws.amazon.com/s3/pricing/): PUT/POST and ``List*`` are tier 1, GET/HEAD and
  any other method tier 2; DELETE requests and ``DeleteObjects`` are free.
* SQS (https://aws.amazon.com/sqs/pricing/): every API call, one request per 64 KB of body.
* Secrets Manager (https://aws.amazon.com/secrets-manager/pricing/): every API call.
* DynamoDB (https://aws.amazon.com/dynamodb/pricing/on-demand/): data-plane calls are priced
  in request units once per call (throttled attempts consume none). While metering,
  ``ReturnConsumedCapacity="TOTAL"`` is injected unless the caller set it, and the reported
  ``ConsumedCapacity`` is used; when the response has none, the units are estimated from the
  request and response bodies by the documented size rule (``aws_pricing.estimate_ddb_units``).
  Errors consume nothing except ``ConditionalCheckFailedException`` (estimated). moto 5.2.5
  reports fixed placeholders (PutItem/DeleteItem/Query/Scan 1.0, GetItem/UpdateItem 0.5,
  BatchWriteItem 1.0 per table) and ``[]`` for TransactWriteItems (so it is estimated).
* Anything else (Step Functions, Lambda and DynamoDB control-plane APIs, ...) is counted in
  ``AwsUsage.other_requests`` as ``service.Operation``: visible, unpriced.

Lambda duration (``record_lambda``), Step Functions transitions (``transitions_from_history``)
and Pipes/Express usage (``record``) are not client requests and are added explicitly.

Threads do not inherit context variables: wrap work handed to a thread pool in
``propagate(fn)`` to count its requests in the submitting meter.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from ..aws_pricing import (
    DDB_READ_OPS,
    DDB_WRITE_OPS,
    AwsPrices,
    aws_prices,
    estimate_ddb_units,
    lambda_gb_seconds,
    reported_ddb_units,
)

R = TypeVar("R")
C = TypeVar("C")


class AwsUsage(BaseModel):
    """AWS usage of some work, in the units AWS bills; every figure is non-negative.

    Raises:
        pydantic.ValidationError: a figure is negative.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sfn_transitions: int = Field(default=0, ge=0, description="Standard state transitions")
    express_requests: int = Field(default=0, ge=0, description="Express executions")
    express_gb_seconds: float = Field(default=0.0, ge=0, description="Express GB-seconds")
    lambda_requests: int = Field(default=0, ge=0, description="Lambda invocations")
    lambda_gb_seconds: float = Field(default=0.0, ge=0, description="Lambda GB-seconds")
    sqs_requests: int = Field(default=0, ge=0, description="SQS requests (64 KB chunks)")
    pipes_requests: int = Field(default=0, ge=0, description="EventBridge Pipes requests")
    ddb_read_units: float = Field(default=0.0, ge=0, description="DynamoDB read request units")
    ddb_write_units: float = Field(default=0.0, ge=0, description="DynamoDB write request units")
    s3_tier1_requests: int = Field(default=0, ge=0, description="S3 PUT/COPY/POST/LIST")
    s3_tier2_requests: int = Field(default=0, ge=0, description="S3 GET/HEAD/other non-free")
    secrets_requests: int = Field(default=0, ge=0, description="Secrets Manager API calls")
    other_requests: dict[str, int] = Field(
        default_factory=dict, description="unpriced requests, 'service.Operation' -> count"
    )

    def __add__(self, other: AwsUsage) -> AwsUsage:
        if not isinstance(other, AwsUsage):
            return NotImplemented
        sums: dict[str, Any] = {
            name: getattr(self, name) + getattr(other, name)
            for name in type(self).model_fields
            if name != "other_requests"
        }
        others = Counter(self.other_requests)
        others.update(other.other_requests)
        return AwsUsage(**sums, other_requests=dict(others))

    def __radd__(self, other: object) -> AwsUsage:
        """``0 + usage`` is ``usage``, so ``sum(usages)`` works."""
        if other == 0:
            return self
        return NotImplemented

    def breakdown_usd(self, prices: AwsPrices | None = None) -> dict[str, float]:
        """USD per category at ``prices`` (default :func:`aws_prices`), each rounded to 1e-9.

        Keys: ``step_functions_standard``, ``step_functions_express``, ``lambda``, ``sqs``,
        ``eventbridge_pipes``, ``dynamodb``, ``s3``, ``secrets_manager``.
        """
        p, m = prices or aws_prices(), 1_000_000
        usd = {
            "step_functions_standard": self.sfn_transitions
            * p.sfn_standard_per_million_transitions
            / m,
            "step_functions_express": self.express_requests * p.sfn_express_per_million_requests / m
            + self.express_gb_seconds * p.sfn_express_per_gb_second,
            "lambda": self.lambda_requests * p.lambda_per_million_requests / m
            + self.lambda_gb_seconds * p.lambda_arm64_per_gb_second,
            "sqs": self.sqs_requests * p.sqs_standard_per_million_requests / m,
            "eventbridge_pipes": self.pipes_requests * p.pipes_per_million_requests / m,
            "dynamodb": self.ddb_write_units * p.ddb_per_million_write_units / m
            + self.ddb_read_units * p.ddb_per_million_read_units / m,
            "s3": self.s3_tier1_requests * p.s3_tier1_per_thousand_requests / 1000
            + self.s3_tier2_requests * p.s3_tier2_per_thousand_requests / 1000,
            "secrets_manager": self.secrets_requests * p.secrets_per_ten_thousand_requests / 1e4,
        }
        return {k: round(v, 9) for k, v in usd.items()}

    def cost_usd(self, prices: AwsPrices | None = None) -> float:
        """Total USD at ``prices`` (default :func:`aws_prices`), rounded to 1e-9."""
        return round(sum(self.breakdown_usd(prices).values()), 9)


class Meter:
    """Accumulates :class:`AwsUsage` and per-operation attempt counts; thread-safe.

    A meter made by :func:`invocation` also counts one Lambda request and the GB-seconds
    elapsed so far (until the block ends) in ``usage``.
    """

    def __init__(self, memory_mb: int = 0) -> None:
        self._lock = threading.Lock()
        self._usage = AwsUsage()
        self._requests: Counter[str] = Counter()
        self._memory_mb = memory_mb
        self._start = time.monotonic()
        self._end: float | None = None

    def lambda_usage(self) -> AwsUsage:
        """This invocation's Lambda request and GB-seconds so far (empty for a plain meter)."""
        if not self._memory_mb:
            return AwsUsage()
        seconds = (self._end or time.monotonic()) - self._start
        return AwsUsage(
            lambda_requests=1, lambda_gb_seconds=lambda_gb_seconds(self._memory_mb, seconds)
        )

    @property
    def usage(self) -> AwsUsage:
        """What was counted so far."""
        with self._lock:
            counted = self._usage
        return counted + self.lambda_usage()

    @property
    def requests(self) -> dict[str, int]:
        """Every counted HTTP attempt as ``'service.Operation' -> count`` (priced or not)."""
        with self._lock:
            return dict(self._requests)

    def add(self, usage: AwsUsage, request: str | None = None) -> None:
        """Add ``usage`` (and one attempt of ``request``, when given)."""
        with self._lock:
            self._usage = self._usage + usage
            if request is not None:
                self._requests[request] += 1


_ACTIVE: contextvars.ContextVar[tuple[Meter, ...]] = contextvars.ContextVar(
    "batch_embedder_aws_meters", default=()
)


@contextlib.contextmanager
def _active(m: Meter) -> Iterator[Meter]:
    token = _ACTIVE.set((*_ACTIVE.get(), m))
    try:
        yield m
    finally:
        m._end = time.monotonic()
        _ACTIVE.reset(token)


def meter() -> contextlib.AbstractContextManager[Meter]:
    """Count the AWS usage of the block (and of meters nested in it) in the yielded Meter."""
    return _active(Meter())


@contextlib.contextmanager
def invocation(memory_mb: int) -> Iterator[Meter]:
    """A :func:`meter` for one Lambda invocation of ``memory_mb`` MB: its ``usage`` (and
    :func:`snapshot` inside it) includes one Lambda request and the GB-seconds measured from
    entry until now (until exit, once the block ended); enclosing meters get them on exit.

    Raises:
        ValueError: ``memory_mb`` is not positive.
    """
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    m = Meter(memory_mb)
    try:
        with _active(m):
            yield m
    finally:
        record(m.lambda_usage())


def snapshot() -> AwsUsage:
    """The usage counted so far by the innermost active meter; empty outside any meter."""
    meters = _ACTIVE.get()
    return meters[-1].usage if meters else AwsUsage()


def record(usage: AwsUsage, request: str | None = None) -> None:
    """Add ``usage`` to every active meter of this context; no-op outside any meter."""
    for m in _ACTIVE.get():
        m.add(usage, request)


def record_lambda(memory_mb: int, seconds: float) -> None:
    """Add one Lambda request and its GB-seconds (``memory_mb`` / 1024 x ``seconds`` rounded
    up to 1 ms) to the active meters; no-op outside any meter.

    Raises:
        ValueError: ``memory_mb`` is not positive or ``seconds`` is negative.
    """
    if memory_mb <= 0 or seconds < 0:
        raise ValueError(f"bad Lambda usage: memory_mb={memory_mb}, seconds={seconds}")
    record(AwsUsage(lambda_requests=1, lambda_gb_seconds=lambda_gb_seconds(memory_mb, seconds)))


def propagate(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` bound to a copy of the caller's context, for ``ThreadPoolExecutor`` workers:
    ``pool.map(propagate(work), items)`` counts ``work``'s requests in the caller's meters.
    Each call runs in its own copy, so the wrapper may run in several threads at once."""
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return run


# --- botocore hooks ----------------------------------------------------------------------

_S3_FREE = {"DeleteObjects"}
_SQS_CHUNK = 64 * 1024
_BODY_KEY = "batch_embedder_metering_body"
_DDB_DATA = DDB_READ_OPS | DDB_WRITE_OPS


def _request_usage(service: str, operation: str, method: str, body: Any) -> AwsUsage:
    """The priced usage of one HTTP attempt (DynamoDB data calls are priced after the call)."""
    if service == "s3":
        if method == "DELETE" or operation in _S3_FREE:
            return AwsUsage()
        if method in ("PUT", "POST") or operation.startswith("List"):
            return AwsUsage(s3_tier1_requests=1)
        return AwsUsage(s3_tier2_requests=1)
    if service == "sqs":
        size = len(body) if isinstance(body, bytes | str) else 0
        return AwsUsage(sqs_requests=max(1, math.ceil(size / _SQS_CHUNK)))
    if service == "secretsmanager":
        return AwsUsage(secrets_requests=1)
    if service == "dynamodb" and operation in _DDB_DATA:
        return AwsUsage()
    return AwsUsage(other_requests={f"{service}.{operation}": 1})


class _Hooks:
    """The botocore handlers of one client (``service`` is its signing service name)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def on_send(self, request: Any, event_name: str, **_: Any) -> None:
        """``before-send``: once per HTTP attempt. Must return None (never a response)."""
        if not _ACTIVE.get():
            return
        operation = event_name.rsplit(".", 1)[-1]
        usage = _request_usage(self.service, operation, str(request.method).upper(), request.body)
        record(usage, f"{self.service}.{operation}")

    def on_params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        """``before-parameter-build.dynamodb``: ask for ConsumedCapacity when metering."""
        if _ACTIVE.get() and "ReturnConsumedCapacity" in model.input_shape.members:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")

    def on_call(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        """``before-call.dynamodb``: keep the serialized body for the size estimate."""
        if _ACTIVE.get():
            context[_BODY_KEY] = params.get("body")

    def on_result(
        self,
        http_response: Any,
        parsed: dict[str, Any],
        model: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        """``after-call.dynamodb``: add the call's read/write units."""
        op = model.name
        if not _ACTIVE.get() or op not in _DDB_DATA:
            return
        status = int(getattr(http_response, "status_code", 200))
        code = parsed.get("Error", {}).get("Code", "")
        if status >= 300 and code != "ConditionalCheckFailedException":
            return
        units = reported_ddb_units(op, parsed) if status < 300 else None
        if units is None:
            content = getattr(http_response, "content", b"") if status < 300 else b""
            try:
                body = json.loads(context.get(_BODY_KEY) or b"{}")
                units = estimate_ddb_units(op, body, json.loads(content or b"{}"))
            except Exception:  # a malformed body must never fail the call: 1 unit
                units = (1.0, 0.0) if op in DDB_READ_OPS else (0.0, 1.0)
        record(AwsUsage(ddb_read_units=units[0], ddb_write_units=units[1]))


def instrument(client: C) -> C:
    """Register the metering hooks on a boto3 client's events and return the client.

    Idempotent (handlers are registered under fixed unique ids). Works for a plain client
    and for a resource's ``meta.client``.
    """
    meta = cast(Any, client).meta
    events, service_model = meta.events, meta.service_model
    hooks = _Hooks(service_model.service_name)
    sid = service_model.service_id.hyphenize()
    uid = "batch_embedder.metering."
    events.register(f"before-send.{sid}", hooks.on_send, unique_id=uid + "send")
    if service_model.service_name == "dynamodb":
        events.register(f"before-parameter-build.{sid}", hooks.on_params, unique_id=uid + "p")
        events.register(f"before-call.{sid}", hooks.on_call, unique_id=uid + "call")
        events.register(f"after-call.{sid}", hooks.on_result, unique_id=uid + "result")
    return client


# --- Step Functions ----------------------------------------------------------------------

_SCHEDULED = {"LambdaFunctionScheduled", "TaskScheduled", "ActivityScheduled"}


def transitions_from_history(events: list[dict[str, Any]]) -> int:
    """Billed Standard state transitions of one execution's ``get_execution_history`` events.

    Every ``*StateEntered`` event is one transition, and each retry of a Task is one more:
    the ``LambdaFunctionScheduled``/``TaskScheduled``/``ActivityScheduled`` events of one state
    entry beyond its first ("state transitions ... including retries",
    https://aws.amazon.com/step-functions/pricing/). A scheduled event belongs to the state
    entry its ``previousEventId`` chain leads to; without ids, to the last entry before it.

    Raises:
        ValueError: an event has no string ``type``.
    """
    by_id = {e["id"]: e for e in events if "id" in e}

    def entry_of(event: dict[str, Any], fallback: Any) -> Any:
        current = by_id.get(event.get("previousEventId"))
        for _ in range(len(events)):  # bounded: a malformed history may loop
            if current is None:
                break
            if str(current.get("type", "")).endswith("StateEntered"):
                return current["id"]
            current = by_id.get(current.get("previousEventId"))
        return fallback

    transitions, last_entered = 0, None
    scheduled: Counter[Any] = Counter()
    for index, event in enumerate(events):
        kind = event.get("type")
        if not isinstance(kind, str):
            raise ValueError(f"history event {index} has no 'type': {event!r}")
        if kind.endswith("StateEntered"):
            transitions += 1
            last_entered = event.get("id", ("index", index))
        elif kind in _SCHEDULED:
            scheduled[entry_of(event, last_entered)] += 1
    return transitions + sum(n - 1 for n in scheduled.values() if n > 1)

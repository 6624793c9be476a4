"""One handler shape for every Lambda: ``functions/<step>/app.py`` is a few lines.

``step_handler(Model, settings=(mixins...))(step)`` gives a Lambda handler that injects the
Lambda context into the logs, traces, parses the event into ``Model`` (a pydantic error
names the field), reads the settings scoped to the function's mixins
(:func:`batch_embedder.settings.scoped`), calls ``step(event, settings)`` inside an AWS
usage meter, and returns
the pydantic result as JSON. A result that carries the execution's AWS usage
(:class:`~batch_embedder.models.Metered`) gains this invocation's: one Lambda request,
its GB-seconds (configured memory x measured duration) and every AWS request it made.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from .aws import metering
from .errors import DatabaseUnavailableError
from .models import Metered
from .settings import Mixins, Settings, get_settings, scoped

logger = Logger()
tracer = Tracer()

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def step_handler(
    model: type[M], *, settings: Mixins
) -> Callable[[Callable[[M, Settings], BaseModel]], Handler]:
    """Make ``step(event: model, settings) -> BaseModel`` a Lambda handler of a function
    whose environment holds the variables of the settings mixins ``settings``.

    The handler keeps the mixins as ``handler.settings_mixins`` (the template test reads
    them).

    Raises:
        pydantic.ValidationError: the event does not fit ``model``.
        DatabaseUnavailableError: any psycopg ``OperationalError`` (the connection was
            refused, killed by a failover, ...), so that the state machine retries it.
    """

    def wrap(step: Callable[[M, Settings], BaseModel]) -> Handler:
        @logger.inject_lambda_context(clear_state=True)
        @tracer.capture_lambda_handler
        @functools.wraps(step)
        def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            with metering.invocation(memory_mb=int(context.memory_limit_in_mb)):
                try:
                    result = step(model.model_validate(event), scoped(get_settings(), settings))
                except psycopg.OperationalError as exc:
                    # One name for the whole class (AdminShutdown, ConnectionFailure, ...):
                    # a Retry matches the error name, not its base classes.
                    raise DatabaseUnavailableError(f"{type(exc).__name__}: {exc}") from exc
                if isinstance(result, Metered):
                    result = result.model_copy(update={"aws": result.aws + metering.snapshot()})
            return result.model_dump(mode="json", exclude_none=True)

        handler.settings_mixins = settings  # type: ignore[attr-defined]
        return handler

    return wrap

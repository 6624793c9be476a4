"""FetchAndWrite: Stream the batch output and write every chunk's vector to pgvector, all or
nothing.

Input: ``WriteInput``; output: see ``batch_embedder.steps.write.fetch_and_write``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import WriteInput
from batch_embedder.settings import get_settings
from batch_embedder.steps.write import fetch_and_write

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=WriteInput)
def lambda_handler(event: WriteInput, context: LambdaContext) -> dict[str, Any]:
    """FetchAndWrite handler: one call into the library, its pydantic result as JSON."""
    return fetch_and_write(event, get_settings()).model_dump(mode="json")

"""CheckCache: Leave out every chunk whose vector is already stored or being embedded by another
execution; choose the Batch or the synchronous API.

Input: ``ChunkedJob``; output: see ``batch_embedder.steps.cache.check_cache``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import ChunkedJob
from batch_embedder.settings import get_settings
from batch_embedder.steps.cache import check_cache

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ChunkedJob)
def lambda_handler(event: ChunkedJob, context: LambdaContext) -> dict[str, Any]:
    """CheckCache handler: one call into the library, its pydantic result as JSON."""
    return check_cache(event, get_settings()).model_dump(mode="json")

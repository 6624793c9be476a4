"""ChunkAndEstimate: Read the uploaded object, chunk it by tokens (cl100k_base), write the chunk
manifest to S3 and estimate the cost.

Input: ``ChunkRequest``; output: see ``batch_embedder.steps.chunk.chunk_and_estimate``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import ChunkRequest
from batch_embedder.settings import get_settings
from batch_embedder.steps.chunk import chunk_and_estimate

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ChunkRequest)
def lambda_handler(event: ChunkRequest, context: LambdaContext) -> dict[str, Any]:
    """ChunkAndEstimate handler: one call into the library, its pydantic result as JSON."""
    return chunk_and_estimate(event, get_settings()).model_dump(mode="json")

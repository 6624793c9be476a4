"""CreateBatch: Create one OpenAI batch per uploaded file, exactly once across retries.

Input: ``UploadedJob``; output: see ``batch_embedder.steps.batch.create_batches``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import UploadedJob
from batch_embedder.settings import get_settings
from batch_embedder.steps.batch import create_batches

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=UploadedJob)
def lambda_handler(event: UploadedJob, context: LambdaContext) -> dict[str, Any]:
    """CreateBatch handler: one call into the library, its pydantic result as JSON."""
    return create_batches(event, get_settings()).model_dump(mode="json")

"""BuildAndUploadJsonl: Pack the chunks into /v1/embeddings request lines and upload the batch
input file(s).

Input: ``ReservedJob``; output: see ``batch_embedder.steps.batch.build_and_upload_jsonl``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import ReservedJob
from batch_embedder.settings import get_settings
from batch_embedder.steps.batch import build_and_upload_jsonl

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ReservedJob)
def lambda_handler(event: ReservedJob, context: LambdaContext) -> dict[str, Any]:
    """BuildAndUploadJsonl handler: one call into the library, its pydantic result as JSON."""
    return build_and_upload_jsonl(event, get_settings()).model_dump(mode="json")

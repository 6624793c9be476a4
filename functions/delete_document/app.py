"""DeleteDocument: An S3 "Object Deleted" event (or a delete marker) removes the object's rows from
pgvector.

Input: ``DeleteRequest``; output: see ``batch_embedder.steps.delete.delete_object_rows``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import DeleteRequest
from batch_embedder.settings import get_settings
from batch_embedder.steps.delete import delete_object_rows

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=DeleteRequest)
def lambda_handler(event: DeleteRequest, context: LambdaContext) -> dict[str, Any]:
    """DeleteDocument handler: one call into the library, its pydantic result as JSON."""
    return delete_object_rows(event, get_settings()).model_dump(mode="json")

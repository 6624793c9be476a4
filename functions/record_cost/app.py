"""RecordCost: Commit the billed tokens, release the rest of the reservation, write the cost ledger
record.

Input: ``WrittenJob``; output: see ``batch_embedder.steps.cost.record_cost``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import WrittenJob
from batch_embedder.settings import get_settings
from batch_embedder.steps.cost import record_cost

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=WrittenJob)
def lambda_handler(event: WrittenJob, context: LambdaContext) -> dict[str, Any]:
    """RecordCost handler: one call into the library, its pydantic result as JSON."""
    return record_cost(event, get_settings()).model_dump(mode="json")
